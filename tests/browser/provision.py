"""Provide the Chromium that the browser tests drive; `make test` runs this first.

Order: a Chromium named by PLAYWRIGHT_CHROMIUM_EXECUTABLE; Debian's /usr/bin/chromium (installed
with apt-get when we are root on Debian and it is missing); else Playwright's own build
(`playwright install chromium`). Exits non-zero when none can be had, so the suite fails rather
than skipping the browser tests.

    python -m tests.browser.provision
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SYSTEM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def system_chromium() -> str | None:
    explicit = os.environ.get("PLAYWRIGHT_CHROMIUM_EXECUTABLE")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return next((path for path in SYSTEM_CANDIDATES if Path(path).is_file()), None)


def playwright_chromium() -> str | None:
    """Playwright's downloaded Chromium, if `playwright install chromium` has run."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    try:
        with sync_playwright() as playwright:
            path = playwright.chromium.executable_path
    except PlaywrightError:
        return None
    return path if path and Path(path).is_file() else None


def _debian_root() -> bool:
    return Path("/etc/debian_version").exists() and hasattr(os, "geteuid") and os.geteuid() == 0


def _run(*command: str) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=False, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def provision() -> str:
    found = system_chromium()
    if found:
        return found
    if os.environ.get("PLAYWRIGHT_CHROMIUM_EXECUTABLE"):
        raise SystemExit(f"PLAYWRIGHT_CHROMIUM_EXECUTABLE={os.environ['PLAYWRIGHT_CHROMIUM_EXECUTABLE']} does not exist.")
    if _debian_root():
        _run("apt-get", "update", "-qq")
        _run("apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium")
        found = system_chromium()
        if found:
            return found
    found = playwright_chromium()
    if found:
        return found
    _run(sys.executable, "-m", "playwright", "install", "chromium")
    found = playwright_chromium()
    if found:
        return found
    raise SystemExit("No Chromium for the browser tests: neither Debian's chromium nor `playwright install chromium` worked.")


if __name__ == "__main__":
    print(f"browser tests use Chromium at {provision()}")
