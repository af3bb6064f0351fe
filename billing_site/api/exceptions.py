"""Turns every error (domain errors and DRF's own) into the one body docs/contract.md §3 defines."""

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from billing_site.errors import HTTP_STATUS, DomainError, ErrorCode, PayloadTooLarge, error_body

logger = logging.getLogger(__name__)

_DRF_CODES = [
    (drf.ParseError, ErrorCode.MALFORMED_JSON),
    (drf.NotAuthenticated, ErrorCode.NOT_AUTHENTICATED),
    (drf.AuthenticationFailed, ErrorCode.AUTHENTICATION_FAILED),
    (drf.PermissionDenied, ErrorCode.PERMISSION_DENIED),
    (drf.NotFound, ErrorCode.NOT_FOUND),
    (drf.MethodNotAllowed, ErrorCode.METHOD_NOT_ALLOWED),
    (drf.NotAcceptable, ErrorCode.NOT_ACCEPTABLE),
    (drf.UnsupportedMediaType, ErrorCode.UNSUPPORTED_MEDIA_TYPE),
    (drf.Throttled, ErrorCode.THROTTLED),
    (drf.ValidationError, ErrorCode.INVALID_REQUEST),
]


def error_response(
    code: ErrorCode, message: str, details: dict | None = None, *, status: int | None = None, headers: dict | None = None
) -> Response:
    body = error_body(code, message, details)
    return Response(body, status=status or HTTP_STATUS[code], headers=headers)


def exception_handler(exc, context):
    if isinstance(exc, RequestDataTooBig):  # a body of undeclared size, refused by Django while reading it
        exc = PayloadTooLarge(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    if isinstance(exc, DomainError):
        return error_response(exc.code, exc.message, exc.details, status=exc.status)
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()
    if not isinstance(exc, drf.APIException):
        logger.exception("unhandled error in %s", context.get("view").__class__.__name__)
        return error_response(ErrorCode.INTERNAL_ERROR, "Something went wrong on our side.")

    code = next((code for cls, code in _DRF_CODES if isinstance(exc, cls)), ErrorCode.INVALID_REQUEST)
    detail_code = exc.get_codes() if not isinstance(exc, drf.ValidationError) else None
    if isinstance(detail_code, str) and detail_code in ErrorCode.__members__.values():
        code = ErrorCode(detail_code)  # a more precise code raised on purpose, e.g. invalid_api_key
    headers = {}
    wait = getattr(exc, "wait", None) if isinstance(exc, drf.Throttled) else None  # the stubs omit Throttled.wait
    if wait is not None:
        headers["Retry-After"] = str(int(wait) + 1)
    auth_header = getattr(exc, "auth_header", None)  # set by the view on a 401 (DRF's own attribute)
    if auth_header:
        headers["WWW-Authenticate"] = auth_header
    if isinstance(exc, drf.ValidationError):
        details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        message = "The request is invalid; see details."
    elif isinstance(exc.detail, dict):  # simplejwt's InvalidToken carries {"detail", "code", "messages"}
        details, message = {}, str(exc.detail.get("detail", "Authentication failed."))
    else:
        details, message = {}, str(exc.detail)
    return error_response(code, message, details, status=exc.status_code, headers=headers)


def json_error_response(error: DomainError) -> JsonResponse:
    """A domain error as a plain Django response, for code that runs outside DRF (middleware, decorators)."""
    return JsonResponse(error.body(), status=error.status)
