"""The gateway's ASGI application: `gunicorn -k uvicorn_worker.UvicornWorker gateway.asgi:application`
(billing_site/run.py starts it beside the web process; docs/operations.md).

Django's own ASGI handler, with the gateway's URLs and none of the site's middleware: those are
synchronous, and each would move every call onto a thread and back. What the gateway needs of them (a
request id, errors in OpenAI's shape, metrics) it does itself.
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from typing import Any

import django
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_site.settings")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402
from django.core.exceptions import RequestAborted  # noqa: E402
from django.http import Http404  # noqa: E402

from gateway import metrics  # noqa: E402 - needs the settings
from gateway.errors import GatewayError, InvalidRequest, ModelNotFound  # noqa: E402

logger = logging.getLogger("gateway")


class _BodyTooLarge(Exception):
    pass


def _declared_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


class GatewayHandler(ASGIHandler):
    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # Django's handler reads the whole body, with no limit (spooled to disk past FILE_UPLOAD_MAX_MEMORY_SIZE),
        # before any view or key check runs: a body past GATEWAY_MAX_BODY_BYTES is refused here, unread.
        try:
            declared = _declared_length(scope)
            if declared is not None and declared > settings.GATEWAY_MAX_BODY_BYTES:
                raise _BodyTooLarge()
            await super().handle(scope, receive, send)
        except _BodyTooLarge:
            error = InvalidRequest(f"The request body is larger than {settings.GATEWAY_MAX_BODY_BYTES} bytes.")
            metrics.REFUSED.labels(error.code).inc()
            response = error.response()
            response["x-request-id"] = uuid.uuid4().hex
            response["Connection"] = "close"  # the rest of the body is never read
            await self.send_response(response, send)

    async def read_body(self, receive: Any) -> io.BytesIO:
        limit = settings.GATEWAY_MAX_BODY_BYTES
        body = io.BytesIO()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestAborted()
            body.write(message.get("body", b""))
            if body.tell() > limit:
                raise _BodyTooLarge()
            if not message.get("more_body", False):
                break
        body.seek(0)
        return body

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        get_response = self._get_response_async  # type: ignore[attr-defined]

        async def gateway_entry(request: Any) -> Any:
            request.urlconf = "gateway.urls"
            try:
                return await get_response(request)
            except Http404:
                return ModelNotFound("Unknown endpoint.", code="unknown_endpoint").response()
            except Exception:
                logger.exception("gateway: unhandled error on %s", request.path)
                return GatewayError().response()

        self._middleware_chain = gateway_entry


application = GatewayHandler()
