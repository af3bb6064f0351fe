"""Request ids, structured logs and their context, carried from a request into the Celery tasks it
starts. Nothing here ever logs a secret: keys appear by their readable prefix only, and the tokens
that travel in URL paths are redacted from every line."""

from __future__ import annotations

import contextvars
import json
import logging
import random
import re
import time
import uuid
from datetime import UTC, datetime

from celery.signals import before_task_publish, task_postrun, task_prerun
from django.conf import settings

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
organization_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("organization", default=None)
principal_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("principal", default=None)

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_logger = logging.getLogger("tollgate.access")

# The URL paths that carry a credential: password-reset links (/reset/<uidb64>/<token>/, but not the
# /reset/<uidb64>/set-password/ that Django redirects to), invitations (/invite/<token>/) and sandbox
# checkouts (/sandbox/checkout/<token>/). tests/test_log_redaction.py finds every route with a token.
_SECRET_IN_PATH = re.compile(r"(/(?:reset/[^/\s?#]+|invite|sandbox/checkout)/)(?!set-password/)[^/\s?#\"']+")
REDACTED = "[redacted]"


def redact_secrets(text: str) -> str:
    """`text` with the secret segment of every reset, invitation and checkout path replaced by [redacted]."""
    return _SECRET_IN_PATH.sub(rf"\1{REDACTED}", text)


class RedactSecretsFilter(logging.Filter):
    """Redacts a record's message and arguments where it is made, so no handler sees the secret; for
    the loggers of Django's own request warnings, which name the path."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_secrets(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_secrets(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def bind_tenant(*, organization: str | None, principal: str | None) -> None:
    """Called once the tenant is known, so every later log line of the request names it."""
    organization_var.set(organization)
    principal_var.set(principal)


def access_line_wanted(*, status: int, seconds: float) -> bool:
    """Every error (4xx, 5xx) and every request slower than ACCESS_LOG_SLOW_MS gets its access line;
    other requests one in 1/ACCESS_LOG_SAMPLE_RATE, at random (a line per request cost more than the
    debit's own Python on the hot path)."""
    if status >= 400 or seconds * 1000 >= settings.ACCESS_LOG_SLOW_MS:
        return True
    rate = settings.ACCESS_LOG_SAMPLE_RATE
    return rate >= 1 or (rate > 0 and random.random() < rate)  # noqa: S311 - sampling, not a secret


class RequestIdMiddleware:
    """Takes X-Request-ID (or makes one), echoes it on every response, and writes the access line of
    every error, every slow request and a sample of the others (`access_line_wanted`)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        tokens = (request_id_var.set(request_id), organization_var.set(None), principal_var.set(None))
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            response["X-Request-ID"] = request_id
            seconds = time.perf_counter() - started
            if access_logger.isEnabledFor(logging.INFO) and access_line_wanted(status=response.status_code, seconds=seconds):
                path = redact_secrets(request.path)
                access_logger.info(
                    "%s %s %s",
                    request.method,
                    path,
                    response.status_code,
                    extra={
                        "status": response.status_code,
                        "duration_ms": round(seconds * 1000, 2),
                        "method": request.method,
                        "path": path,
                    },
                )
            return response
        finally:
            for var, token in zip((request_id_var, organization_var, principal_var), tokens, strict=True):
                var.reset(token)


class ContextFilter(logging.Filter):
    """Adds the request's id, organization and principal to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.organization = organization_var.get()
        record.principal = principal_var.get()
        return True


_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for production log pipelines; the whole line passes redact_secrets,
    since extras such as Django's `request` print the path too."""

    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and value is not None:
                body[key] = value
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return redact_secrets(json.dumps(body, default=str))


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{key}={getattr(record, key)}" for key in ("request_id", "organization", "principal") if getattr(record, key, None)
        )
        return redact_secrets(f"{line} [{context}]" if context else line)


# --- Celery: the request id rides along in the task's headers ---------------------------------------


@before_task_publish.connect
def _publish_request_id(headers=None, **kwargs):
    if headers is not None and request_id_var.get():
        headers["request_id"] = request_id_var.get()


_task_tokens: dict[str, contextvars.Token] = {}


@task_prerun.connect
def _adopt_request_id(task_id=None, task=None, **kwargs):
    published = getattr(task.request, "request_id", None) if task is not None else None
    # Eager tasks run inside the request itself and keep its id.
    _task_tokens[task_id] = request_id_var.set(published or request_id_var.get() or f"task-{task_id}")


@task_postrun.connect
def _drop_request_id(task_id=None, **kwargs):
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        request_id_var.reset(token)
