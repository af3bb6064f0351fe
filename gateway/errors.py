"""The gateway's errors, in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`) so that every
OpenAI SDK raises its own exception class for them (docs/gateway.md, error table)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from django.http import HttpResponse


class GatewayError(Exception):
    status = 500
    type = "api_error"
    code = "internal_error"
    message = "The gateway failed to serve this request."

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> HttpResponse:
        response = HttpResponse(json.dumps(self.body()), status=self.status, content_type="application/json")
        for name, value in self.headers.items():
            response[name] = value
        return response


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    message = "The request is not valid."


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    message = "This endpoint does not take that method."

    def __init__(self, *, allowed: str) -> None:
        super().__init__(f"Use {allowed}.", headers={"Allow": allowed})


class InvalidApiKey(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    message = "Incorrect API key provided."


class InsufficientBalance(GatewayError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_balance"
    message = "The organization's available balance is too low for this request's worst case."


class ModelNotAllowed(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"
    message = "This API key may not use this model."


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    message = "The model does not exist or is not served here."


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    message = "Rate limit reached for this API key."


class UpstreamError(GatewayError):
    status = 502
    type = "api_error"
    code = "upstream_error"
    message = "The upstream failed to answer this request; nothing was charged."


class UpstreamUnavailable(GatewayError):
    status = 503
    type = "api_error"
    code = "upstream_unavailable"
    message = "No upstream can serve this model right now; nothing was charged."


class LimitsUnavailable(GatewayError):
    status = 503
    type = "api_error"
    code = "rate_limits_unavailable"
    message = "This key's rate limits cannot be checked right now; retry shortly. Nothing was charged."


class UpstreamTimeout(GatewayError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"
    message = "The upstream did not answer in time; nothing was charged."


class UpstreamRefused(GatewayError):
    """The upstream refused the request itself (a 4xx other than auth and throttling): its answer is
    passed on, since the client's request is what it objects to. Nothing is charged."""

    def __init__(self, *, status: int, body: bytes, content_type: str) -> None:
        super().__init__("The upstream refused the request.")
        self.status = status
        self.raw_body = body
        self.content_type = content_type

    def response(self) -> HttpResponse:
        return HttpResponse(self.raw_body, status=self.status, content_type=self.content_type)
