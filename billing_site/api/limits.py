"""What every request must fit before any view sees it: body size, JSON nesting, and the
Idempotency-Key header. Each refusal is a clear 4xx with the standard error body, never a 500.

- A body over `DATA_UPLOAD_MAX_MEMORY_SIZE` (setting REQUEST_BODY_MAX_BYTES) answers 413.
- JSON nested deeper than MAX_JSON_DEPTH answers 400 (Python's parser would otherwise exhaust the
  stack: a RecursionError, so a 500).
- An `Idempotency-Key` longer than IDEMPOTENCY_KEY_MAX_LENGTH or with control characters answers 400
  on every endpoint (the columns that keep keys hold 255 characters).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Mapping
from typing import IO, Any, cast

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.utils import json as drf_json

from billing_site.api.exceptions import json_error_response
from billing_site.errors import InvalidRequest, PayloadTooLarge

IDEMPOTENCY_HEADER = "Idempotency-Key"
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
IDEMPOTENCY_KEY_MAX_LENGTH = 255
MAX_JSON_DEPTH = 32


def idempotency_key_validate(key: Any, *, required: bool = True) -> str:
    """A client's idempotency key: a non-empty string (unless not `required`) of at most 255
    characters with no control characters. InvalidRequest otherwise."""
    if not required and key in (None, ""):
        return ""
    if not isinstance(key, str) or not key.strip():
        raise InvalidRequest(
            f"An idempotency key is required (body `idempotency_key` or header {IDEMPOTENCY_HEADER}).",
            details={"idempotency_key": ["This field is required."]},
        )
    if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
        raise InvalidRequest(
            "The idempotency key is too long.",
            details={"idempotency_key": [f"At most {IDEMPOTENCY_KEY_MAX_LENGTH} characters."]},
        )
    if _CONTROL_CHARACTER.search(key):
        raise InvalidRequest(
            "The idempotency key contains a control character.",
            details={"idempotency_key": ["Control characters (NUL, newline, …) are not allowed."]},
        )
    return key


def json_depth(value: Any) -> int:
    """How deeply `value` nests (a scalar is 0, `[]` and `{}` are 1), without recursion. Only
    containers are visited: a batch of a thousand flat events costs a thousand steps, not every field."""
    deepest, stack = 0, [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


class BoundedJsonParser(JSONParser):
    """DRF's JSON parser, refusing documents nested deeper than MAX_JSON_DEPTH (400, not a 500)."""

    def parse(self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            # A StreamReader is a text stream as far as json.load goes (it only calls read()).
            reader = cast(IO[str], codecs.getreader(encoding)(stream))
            data = drf_json.load(reader, parse_constant=drf_json.strict_constant if self.strict else None)
        except RecursionError as exc:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels.") from exc
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
        if json_depth(data) > MAX_JSON_DEPTH:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels.")
        return data


class RequestLimitsMiddleware:
    """Refuses, before any view, a declared body over the size limit (413) and a malformed
    Idempotency-Key header (400). A body whose size is not declared is refused by Django when read
    (RequestDataTooBig), which the API's exception handler also answers with 413."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if settings.DATA_UPLOAD_MAX_MEMORY_SIZE is not None and declared > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            return json_error_response(PayloadTooLarge(settings.DATA_UPLOAD_MAX_MEMORY_SIZE))
        key = request.META.get("HTTP_IDEMPOTENCY_KEY")
        if key is not None:
            try:
                idempotency_key_validate(key, required=False)
            except InvalidRequest as error:
                return json_error_response(error)
        return self.get_response(request)
