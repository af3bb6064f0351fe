"""Secrets that travel in URL paths (password-reset and invitation links, sandbox checkouts) never
reach a log line: not our access line, not Django's own request warnings, not gunicorn's access log."""

import logging
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from gunicorn.config import Config

from accounts import services as account_services
from billing_site.gunicorn_logging import RedactingLogger
from billing_site.observability import JsonFormatter, PlainFormatter, redact_secrets


def every_line(records: list[logging.LogRecord]) -> list[str]:
    """What each record becomes: its message, and our JSON and plain lines (with every extra)."""
    plain = PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    return [text for record in records for text in (record.getMessage(), JsonFormatter().format(record), plain.format(record))]


def test_reset_and_invitation_tokens_never_reach_a_log_line(owner, organization, mailoutbox, caplog, settings):
    settings.ACCESS_LOG_SAMPLE_RATE = 1  # every access line, not a sample: each one must be redacted
    caplog.set_level(logging.DEBUG)
    invitation = account_services.invitation_create(
        organization=organization, email="ken@example.com", role="member", invited_by=owner
    )
    expired = account_services.invitation_create(
        organization=organization, email="old@example.com", role="member", invited_by=owner, ttl=timedelta(seconds=-1)
    )
    Client().post("/password-reset/", {"email": owner.email})
    reset_path = re.search(r"http://testserver(/reset/\S+/)", mailoutbox[-1].body).group(1)
    reset_token = reset_path.strip("/").split("/")[-1]
    secrets = [invitation.token, expired.token, reset_token, "forged-invitation-token", "forged-reset-token"]

    visitor = Client()
    assert visitor.get(f"/invite/{invitation.token}/").status_code == 200
    assert visitor.get(f"/invite/{expired.token}/").status_code == 404  # Django logs "Not Found: <path>"
    assert visitor.get("/invite/forged-invitation-token/").status_code == 404
    assert Client(enforce_csrf_checks=True).post(f"/invite/{invitation.token}/", {}).status_code == 403  # CSRF warning
    assert visitor.get(reset_path).status_code == 302
    assert visitor.get(reset_path.replace(reset_token, "forged-reset-token")).status_code == 200

    lines = every_line(caplog.records)
    assert any("/invite/[redacted]/ 200" in line for line in lines)
    assert any("Not Found: /invite/[redacted]/" in line for line in lines)
    for secret in secrets:
        leaking = [line for line in lines if secret in line]
        assert not leaking, leaking


def test_gunicorn_access_lines_redact_the_path_the_request_line_and_the_referrer(caplog):
    config = Config()
    config.set("accesslog", "-")
    logger = RedactingLogger(config)
    logger.access_log.addHandler(caplog.handler)
    token = "s3cr3t-invitation-token"

    class Response:
        status, sent, headers = "200 OK", 512, [("Content-Type", "text/html")]

    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"/invite/{token}/?x=1",
        "PATH_INFO": f"/invite/{token}/",
        "QUERY_STRING": "x=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.9",
        "HTTP_REFERER": f"https://billing.example.com/reset/MQ/{token}/",
        "HTTP_USER_AGENT": "curl",
    }
    request_headers = [("REFERER", environ["HTTP_REFERER"])]

    logger.cfg.set("access_log_format", config.access_log_format + " %(U)s %({referer}i)s %({raw_uri}e)s")
    logger.access(Response(), request_headers, environ, timedelta(milliseconds=3))

    [line] = [record.getMessage() for record in caplog.records]
    assert token not in line
    assert '"GET /invite/[redacted]/?x=1 HTTP/1.1" 200' in line
    assert "https://billing.example.com/reset/MQ/[redacted]/" in line


def _routes(resolver: URLResolver, prefix: str = ""):
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _routes(entry, route)
        elif isinstance(entry, URLPattern):
            yield route


@pytest.mark.parametrize("route", [r for r in _routes(get_resolver()) if "token>" in r])
def test_every_route_that_carries_a_token_is_redacted(route):
    path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: f"{m.group(1)}-VALUE", route).lstrip("^").rstrip("$")

    assert "token-VALUE" not in redact_secrets(path), route


@pytest.mark.parametrize(
    "path",
    [
        "/reset/done/",
        "/reset/MQ/set-password/",
        "/password-reset/sent/",
        "/dashboard/team/invitations/4/revoke/",
        "/api/v1/usage/",
        "/invitations/abc/",
    ],
)
def test_paths_without_a_secret_are_logged_as_they_are(path):
    assert redact_secrets(path) == path
