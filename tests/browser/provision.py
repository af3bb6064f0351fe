"""Provide what the browser tests need; `make test` runs this first.

Chromium, in this order: one named by PLAYWRIGHT_CHROMIUM_EXECUTABLE; Debian's /usr/bin/chromium
(installed with apt-get when we are root on Debian and it is missing); else Playwright's own build
(`playwright install chromium`).

axe-core, pinned in tests/browser/package.json and package-lock.json, installed with `npm ci` into
tests/browser/node_modules (skipped when the installed copy already matches the lock, so a second
run needs no network; npm itself comes from Debian's `npm` when we are root on Debian).

Exits non-zero when either cannot be had, so the suite fails rather than skipping the browser tests.

    python -m tests.browser.provision
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SYSTEM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
NODE_PROJECT = Path(__file__).resolve().parent
AXE_PACKAGE = NODE_PROJECT / "node_modules" / "axe-core"
AXE_SCRIPT = AXE_PACKAGE / "axe.min.js"


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


def axe_locked_version() -> str:
    lock = json.loads((NODE_PROJECT / "package-lock.json").read_text())
    return str(lock["packages"]["node_modules/axe-core"]["version"])


def axe_installed_version() -> str | None:
    manifest = AXE_PACKAGE / "package.json"
    if not (manifest.is_file() and AXE_SCRIPT.is_file()):
        return None
    return str(json.loads(manifest.read_text()).get("version"))


def provision_axe() -> Path:
    wanted = axe_locked_version()
    if axe_installed_version() == wanted:
        return AXE_SCRIPT
    if shutil.which("npm") is None and _debian_root():
        _run("apt-get", "update", "-qq")
        _run("apt-get", "install", "-y", "-qq", "--no-install-recommends", "npm")
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("No npm to install axe-core for the browser tests (Debian: apt-get install npm).")
    command = [npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--ignore-scripts"]
    print("+", " ".join(command), f"(in {NODE_PROJECT})", flush=True)
    if subprocess.run(command, cwd=NODE_PROJECT, check=False).returncode != 0:
        raise SystemExit("`npm ci` failed: axe-core could not be installed for the browser tests.")
    installed = axe_installed_version()
    if installed != wanted:
        raise SystemExit(f"axe-core {wanted} is locked but {installed or 'nothing'} is installed after `npm ci`.")
    return AXE_SCRIPT


if __name__ == "__main__":
    print(f"browser tests use Chromium at {provision()}")
    print(f"browser tests use axe-core {axe_locked_version()} from {provision_axe()}")
