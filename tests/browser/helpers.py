"""Arrangement helpers for the browser tests."""

from __future__ import annotations

from tests.factories import PASSWORD


def log_in(visitor, email: str, password: str = PASSWORD) -> None:
    visitor.goto("/login/")
    visitor.page.get_by_label("Email").fill(email)
    visitor.page.get_by_label("Password").fill(password)
    visitor.page.get_by_role("button", name="Log in").click()
    visitor.page.wait_for_url("**/dashboard/")
