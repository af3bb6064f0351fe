"""Accessibility checks with axe-core (pinned in tests/browser/package.json, installed by provision.py).

    from tests.browser.axe import axe_check
    axe_check(visitor.page)  # fails on any critical or serious violation

The script is evaluated through Playwright (the DevTools protocol), not added as a <script> tag, so
the pages' Content-Security-Policy stays as strict as in production.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from tests.browser.provision import AXE_SCRIPT

FAILING_IMPACTS = ("critical", "serious")


@cache
def axe_source() -> str:
    if not AXE_SCRIPT.is_file():
        pytest.fail(f"axe-core is not installed ({AXE_SCRIPT} is missing): run `make test`, which provisions it.")
    return AXE_SCRIPT.read_text(encoding="utf-8")


def axe_violations(page, *, impacts: tuple[str, ...] = FAILING_IMPACTS) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now, keeping only the given impacts."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        # Compiled by the DevTools protocol, so 'unsafe-eval' is not needed (eval or new Function would be refused).
        page.evaluate("() => {\n" + axe_source() + "\n}")
    results = page.evaluate("async () => await window.axe.run(document, {resultTypes: ['violations']})")
    return [violation for violation in results["violations"] if violation.get("impact") in impacts]


def format_violations(violations: list[dict[str, Any]]) -> str:
    lines = []
    for violation in violations:
        lines.append(f"[{violation['impact']}] {violation['id']}: {violation['help']} ({violation['helpUrl']})")
        for node in violation["nodes"]:
            target = " ".join(str(part) for part in node["target"])
            lines.append(f"    at {target}")
            lines.append(f"       {node['html'][:200]}")
            for summary_line in (node.get("failureSummary") or "").splitlines():
                lines.append(f"       {summary_line.strip()}")
    return "\n".join(lines)


def axe_check(page, *, context: str = "") -> None:
    """Fail the test when axe-core finds any critical or serious violation on the page."""
    violations = axe_violations(page)
    if violations:
        where = context or page.url
        pytest.fail(
            f"axe-core: {len(violations)} critical/serious violation(s) on {where}\n{format_violations(violations)}",
            pytrace=False,
        )
