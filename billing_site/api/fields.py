"""Serializer fields and OpenAPI parameters every API module shares."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers

from billing_site.api.limits import IDEMPOTENCY_HEADER

# The Idempotency-Key header as documented on every operation that accepts it.
IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(IDEMPOTENCY_HEADER, OpenApiTypes.STR, OpenApiParameter.HEADER, required=False)


def Amount(**options: Any) -> serializers.DecimalField:  # noqa: N802 - reads like a field class at call sites
    """A money amount as the API carries it: a decimal string with the stored scale (28 digits, 12
    places). A new field each time: one instance shared by several names binds to the last name only,
    and the others vanish from the output and the schema."""
    return serializers.DecimalField(max_digits=28, decimal_places=12, **options)
