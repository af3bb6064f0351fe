"""OpenAPI post-processing: the error body, the status codes every operation can answer, and the
headers (X-Organization) that apply to tenant endpoints — declared once here instead of on each view."""

from __future__ import annotations

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "description": "Stable snake_case code, e.g. insufficient_balance."},
                "message": {"type": "string"},
                "details": {"type": "object", "additionalProperties": True},
            },
        }
    },
}
DESCRIPTIONS = {
    "400": "Invalid request (see error.details)",
    "401": "Missing or invalid credentials",
    "402": "Insufficient balance, or the API key's spend cap is reached",
    "403": "Not allowed for this role or principal",
    "404": "Not found (or another organization's)",
    "409": "Idempotency key reused with a different body, or the object is no longer in that state",
    "413": "The body is larger than the limit (REQUEST_BODY_MAX_BYTES)",
    "415": "The body must be JSON",
    "429": "Rate limited; see Retry-After",
    "502": "The payment provider could not be reached",
}
# Codes beyond the common ones, by (method, path).
EXTRA_STATUSES = {
    ("post", "/api/v1/usage/"): {"402", "404", "409"},
    ("post", "/api/v1/holds/"): {"402", "404", "409"},
    ("post", "/api/v1/holds/{hold_id}/capture/"): {"402", "409"},
    ("post", "/api/v1/holds/{hold_id}/release/"): {"409"},
    ("post", "/api/v1/payments/recharge/"): {"409", "502"},
    ("post", "/api/v1/admin/prices/"): {"404"},
    ("post", "/api/v1/admin/organizations/{slug}/adjust/"): {"402"},
}
ORGANIZATION_HEADER = {
    "name": "X-Organization",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "The organization's slug, for a person (JWT) who belongs to several. Ignored for API keys.",
}
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds until the window resets"}}


def postprocess(result, generator, request, public):
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            authenticated = bool(operation.get("security")) and operation.get("security") != [{}]
            statuses = {"400", "429"}
            if authenticated:
                statuses |= {"401", "403"}
            parameters = {p.get("name") for p in operation.get("parameters", [])}
            tenant_scoped = authenticated and "/admin/" not in path and path != "/api/v1/me/"
            # an unknown id, a page past the end, or an X-Organization the caller is not in
            if "{" in path or "page" in parameters or tenant_scoped:
                statuses.add("404")
            if path.startswith("/api/v1/auth/token/"):
                statuses.add("401")
            if method in ("post", "put", "patch"):
                statuses |= {"413", "415"}
            statuses |= EXTRA_STATUSES.get((method, path), set())
            responses = operation.setdefault("responses", {})
            for status in sorted(statuses):
                response = responses.setdefault(status, {"description": DESCRIPTIONS[status]})
                response.setdefault("content", error)
                if status == "429":
                    response["headers"] = RETRY_AFTER
            if tenant_scoped and not any(p.get("name") == "X-Organization" for p in operation.get("parameters", [])):
                operation.setdefault("parameters", []).append(ORGANIZATION_HEADER)
    return result
