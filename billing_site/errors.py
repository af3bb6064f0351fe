"""Domain errors with stable codes. Services raise these; the API renders them (docs/contract.md §3)."""

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    MALFORMED_JSON = "malformed_json"
    NOT_AUTHENTICATED = "not_authenticated"
    AUTHENTICATION_FAILED = "authentication_failed"
    INVALID_API_KEY = "invalid_api_key"
    PERMISSION_DENIED = "permission_denied"
    ORGANIZATION_REQUIRED = "organization_required"
    NOT_FOUND = "not_found"
    SERVICE_NOT_FOUND = "service_not_found"
    RECEIPT_NOT_FOUND = "receipt_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_ACCEPTABLE = "not_acceptable"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    SPEND_CAP_EXCEEDED = "spend_cap_exceeded"
    BUDGET_EXCEEDED = "budget_exceeded"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    HOLD_NOT_ACTIVE = "hold_not_active"
    PRICE_NOT_SET = "price_not_set"
    THROTTLED = "throttled"
    INVALID_CODE = "invalid_code"
    INVALID_SIGNATURE = "invalid_signature"
    PROVIDER_ERROR = "provider_error"
    INTERNAL_ERROR = "internal_error"


HTTP_STATUS = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.MALFORMED_JSON: 400,
    ErrorCode.ORGANIZATION_REQUIRED: 400,
    ErrorCode.NOT_AUTHENTICATED: 401,
    ErrorCode.AUTHENTICATION_FAILED: 401,
    ErrorCode.INVALID_API_KEY: 401,
    ErrorCode.INSUFFICIENT_BALANCE: 402,
    ErrorCode.SPEND_CAP_EXCEEDED: 402,
    ErrorCode.BUDGET_EXCEEDED: 402,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.SERVICE_NOT_FOUND: 404,
    ErrorCode.RECEIPT_NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.NOT_ACCEPTABLE: 406,
    ErrorCode.IDEMPOTENCY_CONFLICT: 409,
    ErrorCode.HOLD_NOT_ACTIVE: 409,
    ErrorCode.PRICE_NOT_SET: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.THROTTLED: 429,
    ErrorCode.INVALID_CODE: 400,
    ErrorCode.INVALID_SIGNATURE: 400,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.PROVIDER_ERROR: 502,
}


def error_body(code: ErrorCode | str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one error body every API answer uses: {"error": {"code", "message", "details"}}."""
    return {"error": {"code": str(code), "message": message, "details": details or {}}}


class DomainError(Exception):
    """A refusal a client can act on. Raising one inside a transaction rolls it back."""

    code: ErrorCode = ErrorCode.INVALID_REQUEST
    message = "The request was refused."

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None):
        self.message = message or self.message
        self.details = details or {}
        super().__init__(self.message)

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


class InvalidRequest(DomainError):
    code = ErrorCode.INVALID_REQUEST
    message = "The request is invalid."


class NotFound(DomainError):
    code = ErrorCode.NOT_FOUND
    message = "Not found."


class PermissionRefused(DomainError):
    code = ErrorCode.PERMISSION_DENIED
    message = "You are not allowed to do this."


class PayloadTooLarge(DomainError):
    code = ErrorCode.PAYLOAD_TOO_LARGE

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"The request body is larger than {max_bytes} bytes.", details={"max_bytes": max_bytes})


class OrganizationRequired(DomainError):
    code = ErrorCode.ORGANIZATION_REQUIRED
    message = "You belong to several organizations: name one with the X-Organization header."


class IdempotencyConflict(DomainError):
    code = ErrorCode.IDEMPOTENCY_CONFLICT
    message = "This idempotency key was already used with a different request body."
