"""The demo's sandbox upstream over HTTP (`/sandbox/v1/…` on the gateway): simulated answers for a route's
upstream marked `sandbox`, so `make run` answers OpenAI SDK calls with no model behind it. Off in
production unless GATEWAY_SANDBOX_ENABLED says otherwise (a demo provider must not be left on by accident)."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from gateway.simulate import simulated_answer


async def sandbox_upstream(request: HttpRequest, path: str) -> HttpResponseBase:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        return HttpResponse(b'{"error": {"message": "Not JSON.", "type": "invalid_request_error"}}', status=400)
    status, content_type, answer = simulated_answer(path, body)
    if isinstance(answer, bytes):
        return HttpResponse(answer, status=status, content_type=content_type)
    return StreamingHttpResponse(answer, status=status, content_type=content_type)
