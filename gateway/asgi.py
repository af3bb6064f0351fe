"""The gateway's ASGI application: `gunicorn -k uvicorn_worker.UvicornWorker gateway.asgi:application`
(billing_site/run.py starts it beside the web process; docs/operations.md).

Django's own ASGI handler, with the gateway's URLs and none of the site's middleware: those are
synchronous, and each would move every call onto a thread and back. What the gateway needs of them (a
request id, errors in OpenAI's shape, metrics) it does itself.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import django
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_site.settings")
django.setup(set_prefix=False)

from django.http import Http404  # noqa: E402

from gateway.errors import GatewayError, ModelNotFound  # noqa: E402 - needs the settings

logger = logging.getLogger("gateway")


class GatewayHandler(ASGIHandler):
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
