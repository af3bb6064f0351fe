"""Assertions shared by the accounts tests."""

import re

SNAKE_CASE = re.compile(r"^[a-z]+(_[a-z]+)*$")


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response is docs/contract.md §3's error body, exactly: {"error": {"code", "message", "details"}}."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["code"], str) and SNAKE_CASE.match(error["code"]), error
    assert isinstance(error["message"], str) and error["message"], error
    assert "ErrorDetail" not in error["message"], error  # no Python repr leaks into the message
    assert isinstance(error["details"], dict), error
    if code is not None:
        assert error["code"] == code, error
    return error
