"""REST API for services, usage and holds (docs/contract.md §3)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts.api import StrictSerializer
from accounts.tenancy import TenantMixin
from billing_site import keyset
from billing_site.api.fields import IDEMPOTENCY_KEY_PARAMETER, Amount
from billing_site.api.limits import IDEMPOTENCY_HEADER
from billing_site.api.negotiation import FileNegotiation
from billing_site.api.pagination import (
    CURSOR_PARAMETER,
    PAGE_PARAMETERS,
    cursor_paginated_response,
    paginated,
    paginated_response,
    wants_cursor,
)
from billing_site.api.staff import StaffMayChange
from billing_site.api.throttling import BatchEventRateThrottle, PrincipalRateThrottle
from billing_site.csv_stream import csv_stream_response
from billing_site.errors import DomainError, InvalidRequest, NotFound, PermissionRefused
from billing_site.money import MONEY_QUANTUM, money_str
from metering import selectors, services
from metering.calculators import ALL_QUANTITY_FIELDS, MAX_COUNT
from metering.exports import EXPORT_CHUNK, EXPORT_FIRST_CHUNK, usage_csv_header, usage_csv_rows
from metering.models import CalcMethod, Hold, Plan, Price, PriceModel, Service, UsageRecord
from metering.pricing import ALL_PRICE_FIELDS, prices_listed
from metering.services import plans as plan_services
from metering.services.catalog import PriceSpec
from metering.services.usage_sql import BatchRecord

USAGE_FIELDS = frozenset({"service", "idempotency_key", "metadata", *ALL_QUANTITY_FIELDS})


def _json_object(body: Any, allowed: frozenset[str], *, what: str = "The body") -> dict[str, Any]:
    """`body` as a JSON object with no field outside `allowed`; InvalidRequest names the strays."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"{what} must be a JSON object.")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"Unknown field(s): {', '.join(unknown)}.", details={name: ["Unknown field."] for name in unknown})
    return body


def _service_and_key(body: dict[str, Any], *, header_key: str | None) -> tuple[str, str]:
    """The service slug and the idempotency key (from the body, else the Idempotency-Key header)."""
    service = body.get("service")
    if not isinstance(service, str) or not service:
        raise InvalidRequest("`service` is required.", details={"service": ["This field is required."]})
    key = body.get("idempotency_key") if body.get("idempotency_key") is not None else header_key
    return service, services.validate_idempotency_key(key)


def _quantities(body: dict[str, Any]) -> dict[str, Any]:
    return {name: body[name] for name in ALL_QUANTITY_FIELDS if name in body}


def _event_from(body: Any, *, header_key: str | None) -> services.UsageEvent:
    """Parse one usage event; InvalidRequest names the offending fields."""
    body = _json_object(body, USAGE_FIELDS, what="Each usage event")
    service, key = _service_and_key(body, header_key=header_key)
    return services.UsageEvent(
        service=service, idempotency_key=key, data=_quantities(body), metadata=services.validate_metadata(body.get("metadata"))
    )


def _utc_iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def usage_body(record: UsageRecord | BatchRecord) -> dict[str, Any]:
    """The usage answer (docs/contract.md §3). On the batch path this runs a thousand times per request: keep it plain."""
    body = {
        "id": record.pk,
        "service": record.service.slug,
        "quantity": record.quantity,
        "cost": money_str(record.cost),
        "balance_after": money_str(record.balance_after),
        "test": record.test,
        "idempotency_key": record.idempotency_key,
        "created_at": _utc_iso(record.created_at),
        "metadata": record.metadata,
    }
    if record.input_tokens is not None:
        body["input_tokens"] = record.input_tokens
        body["output_tokens"] = record.output_tokens
    if record.cached_input_tokens is not None:
        body["cached_input_tokens"] = record.cached_input_tokens
    if record.input_price is not None:
        body["input_price"] = money_str(record.input_price)
    if record.output_price is not None:
        body["output_price"] = money_str(record.output_price)
    if record.cached_input_price is not None:
        body["cached_input_price"] = money_str(record.cached_input_price)
    if record.unit_price is not None:
        body["unit_price"] = money_str(record.unit_price)
    pricing = getattr(record, "pricing", None)
    if pricing is not None:  # a positional price (docs/pricing.md): where the event's units started, and the price
        body["position"] = record.position
        body["pricing"] = pricing
    return body


UsageInput = inline_serializer(
    "UsageInput",
    {
        "service": serializers.CharField(),
        "idempotency_key": serializers.CharField(required=False, max_length=255),
        "input_tokens": serializers.IntegerField(required=False, min_value=0),
        "output_tokens": serializers.IntegerField(required=False, min_value=0),
        "cached_input_tokens": serializers.IntegerField(
            required=False,
            min_value=0,
            help_text="TOKENS, optional: how many of `input_tokens` were served from the upstream's prompt cache "
            "(at most `input_tokens`). They cost the service's `cached_input_price`, or its input price when it has none.",
        ),
        "text": serializers.CharField(required=False),
        "characters": serializers.IntegerField(required=False, min_value=0),
        "words": serializers.IntegerField(required=False, min_value=0),
        "width": serializers.IntegerField(required=False, min_value=1, max_value=16384),
        "height": serializers.IntegerField(required=False, min_value=1, max_value=16384),
        "images": serializers.IntegerField(required=False, min_value=1),
        "metadata": serializers.DictField(required=False),
    },
)


class UsageOutput(serializers.Serializer[UsageRecord]):
    """Documents the usage body; renders through `usage_body` so the hot path and the schema agree."""

    id = serializers.IntegerField()
    service = serializers.CharField()
    quantity = serializers.IntegerField()
    input_tokens = serializers.IntegerField(required=False)
    output_tokens = serializers.IntegerField(required=False)
    cached_input_tokens = serializers.IntegerField(required=False)
    input_price = Amount(required=False)
    output_price = Amount(required=False)
    cached_input_price = Amount(required=False)
    unit_price = Amount(required=False)
    position = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="Positional prices only: the organization's usage of the service this month before this event.",
    )
    pricing = serializers.DictField(
        required=False,
        help_text="Positional prices only: what the event was priced with — model, tiers or package, price id, "
        "and `free_until` (units at positions below it were included in the plan).",
    )
    cost = Amount()
    balance_after = Amount(allow_null=True)
    test = serializers.BooleanField()
    idempotency_key = serializers.CharField()
    created_at = serializers.DateTimeField()
    metadata = serializers.DictField()

    class Meta:
        ref_name = "Usage"

    def to_representation(self, instance: UsageRecord) -> dict[str, Any]:
        return usage_body(instance)


USAGE_EXAMPLE = {
    "id": 1001,
    "service": "gpt-4o",
    "quantity": 1550,
    "input_tokens": 1200,
    "output_tokens": 350,
    "cost": "0.006500000000",
    "balance_after": "120.493500000000",
    "test": False,
    "idempotency_key": "req_8f14e45f",
    "created_at": "2026-03-01T09:30:00Z",
    "metadata": {"user": "u_42"},
}
# 176 uncached input tokens at $2.50, 1,024 cached at $1.25 and 350 output at $10.00 per 1M tokens.
USAGE_CACHED_EXAMPLE = {
    "id": 1002,
    "service": "gpt-4o",
    "quantity": 1550,
    "input_tokens": 1200,
    "output_tokens": 350,
    "cached_input_tokens": 1024,
    "input_price": "2.500000000000",
    "output_price": "10.000000000000",
    "cached_input_price": "1.250000000000",
    "cost": "0.005220000000",
    "balance_after": "120.488280000000",
    "test": False,
    "idempotency_key": "req_c9f0f895",
    "created_at": "2026-03-01T09:31:00Z",
    "metadata": {},
}


class UsageApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        request=UsageInput,
        responses={201: UsageOutput, 200: UsageOutput},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        tags=["usage"],
        summary="Record and pay for one usage event",
        description="Prices the event at the service's price in force for your organization and debits your balance "
        "in the same step. Send the quantities the service's method needs: `input_tokens` and `output_tokens` "
        "(TOKENS, with `cached_input_tokens` when part of the input came from a prompt cache), `text` or "
        "`characters` (CHAR_COUNT), `text` or `words` (WORD_COUNT), `width`, `height` and `images` "
        "(IMAGE_RESOLUTION), nothing (REQUEST). Every event carries an idempotency key (in the body or the "
        "`Idempotency-Key` header): sending it again with the same body answers the first result (200) and charges "
        "nothing; with another body it is refused (409). 402 when your available balance (or the key's spend cap) "
        "cannot pay for it. A `tg_test_…` key records the event without moving money.",
        examples=[
            OpenApiExample(
                "Tokens",
                value={
                    "service": "gpt-4o",
                    "idempotency_key": "req_8f14e45f",
                    "input_tokens": 1200,
                    "output_tokens": 350,
                    "metadata": {"user": "u_42"},
                },
                request_only=True,
            ),
            OpenApiExample(
                "Tokens, some of the input cached",
                value={
                    "service": "gpt-4o",
                    "idempotency_key": "req_c9f0f895",
                    "input_tokens": 1200,
                    "cached_input_tokens": 1024,
                    "output_tokens": 350,
                },
                request_only=True,
            ),
            OpenApiExample(
                "Characters", value={"service": "translate", "idempotency_key": "t-1", "text": "Bonjour"}, request_only=True
            ),
            OpenApiExample("Recorded", value=USAGE_EXAMPLE, response_only=True, status_codes=["201"]),
            OpenApiExample(
                "Recorded, some of the input cached", value=USAGE_CACHED_EXAMPLE, response_only=True, status_codes=["201"]
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        event = _event_from(request.data, header_key=request.headers.get(IDEMPOTENCY_HEADER))
        outcome = services.usage_record(tenant=self.tenant, event=event)
        return Response(usage_body(outcome.record), status=status.HTTP_200_OK if outcome.replayed else status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[
            OpenApiParameter("service", str),
            OpenApiParameter("from", OpenApiTypes.DATETIME),
            OpenApiParameter("to", OpenApiTypes.DATETIME),
            OpenApiParameter("api_key", int),
            OpenApiParameter("test", bool),
            *PAGE_PARAMETERS,
            CURSOR_PARAMETER,
        ],
        responses={200: paginated(UsageOutput, "UsagePage", cursor=True)},
        operation_id="v1_usage_list",
        tags=["usage"],
        summary="List usage events",
        description="Your usage records, newest first, a page at a time. Filter by `service` (slug), `from` and `to` "
        "(ISO times, `to` excluded), `api_key` (id) and `test`. Works with a JWT or an API key. Page by number "
        "(`page`, with a `count`), or for deep histories by `cursor` (`?cursor=` to start, then follow `next`): "
        "a cursor page costs the same at any depth.",
    )
    def get(self, request: Request) -> Response:
        records = selectors.usage_list(organization_id=self.tenant.organization.pk, **usage_filters(request))
        respond = cursor_paginated_response if wants_cursor(request) else paginated_response
        return respond(request=request, view=self, queryset=records, serializer_class=UsageOutput)


def _when(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:  # Django's parsers answer None for a bad shape but raise ValueError for e.g. month 13
        parsed = parse_datetime(value)
        if parsed is None:
            day = parse_date(value)
            parsed = datetime(day.year, day.month, day.day) if day is not None else None
        if parsed is not None:
            # In UTC before it reaches PostgreSQL, which refuses offsets Python accepts (e.g. -20:16).
            parsed = parsed.astimezone(UTC) if timezone.is_aware(parsed) else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        parsed = None
    if parsed is None:
        raise InvalidRequest(f"`{name}` must be an ISO date or time.", details={name: ["Invalid date or time."]})
    return parsed


def _flag(value: str | None, name: str) -> bool:
    if value in (None, "", "false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise InvalidRequest(f"`{name}` must be true or false.", details={name: ["Must be true or false."]})


def usage_filters(request: Request) -> dict[str, Any]:
    params = request.query_params
    test = params.get("test")
    if test not in (None, "", "true", "false", "1", "0"):
        raise InvalidRequest("`test` must be true or false.", details={"test": ["Must be true or false."]})
    if "\x00" in (params.get("service") or ""):
        raise InvalidRequest("`service` contains a NUL character.", details={"service": ["NUL characters are not allowed."]})
    api_key = params.get("api_key")
    if api_key and not api_key.isdigit():
        raise InvalidRequest("`api_key` must be a key id.", details={"api_key": ["Must be an integer id."]})
    return {
        "service": params.get("service") or None,
        "created_from": _when(params.get("from"), "from"),
        "created_to": _when(params.get("to"), "to"),
        "api_key_id": int(api_key) if api_key else None,
        "test": None if test in (None, "") else test in ("true", "1"),
    }


class UsageBatchApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated]
    throttle_classes = [PrincipalRateThrottle, BatchEventRateThrottle]

    @extend_schema(
        request=inline_serializer("UsageBatchInput", {"events": serializers.ListField(child=UsageInput, max_length=1000)}),
        responses={200: inline_serializer("UsageBatchOutput", {"results": serializers.ListField(child=serializers.DictField())})},
        tags=["usage"],
        summary="Record up to 1,000 usage events at once",
        description="The events are applied in order, each exactly as `POST usage/` would (each with its own "
        "idempotency key), and the answer has one result per event, in the same order: `{index, status, usage}` for "
        "one recorded (201) or replayed (200), `{index, status, error}` for one refused. One refused event does not "
        "stop the others. For high volumes: far cheaper than one request per event.",
        examples=[
            OpenApiExample(
                "Two events",
                value={
                    "events": [
                        {"service": "gpt-4o", "idempotency_key": "b-1", "input_tokens": 1200, "output_tokens": 350},
                        {"service": "moderation", "idempotency_key": "b-2"},
                    ]
                },
                request_only=True,
            ),
            OpenApiExample(
                "Results",
                value={
                    "results": [
                        {"index": 0, "status": 201, "usage": USAGE_EXAMPLE},
                        {
                            "index": 1,
                            "status": 402,
                            "error": {"code": "insufficient_balance", "message": "Insufficient balance.", "details": {}},
                        },
                    ]
                },
                response_only=True,
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        events = request.data.get("events") if isinstance(request.data, dict) else None
        if not isinstance(events, list) or not events:
            raise InvalidRequest("`events` must be a non-empty list.", details={"events": ["Must be a non-empty list."]})
        if len(events) > settings.USAGE_BATCH_MAX_EVENTS:
            raise InvalidRequest(
                f"At most {settings.USAGE_BATCH_MAX_EVENTS} events per batch.",
                details={"events": [f"At most {settings.USAGE_BATCH_MAX_EVENTS} events."]},
            )
        parsed: list[services.UsageEvent | DomainError] = []
        for body in events:
            try:
                parsed.append(_event_from(body, header_key=None))
            except DomainError as error:
                parsed.append(error)
        results = services.usage_record_batch(tenant=self.tenant, events=parsed)
        return Response({"results": [_batch_item(index, result) for index, result in enumerate(results)]})


def _batch_item(index: int, result: services.BatchResult) -> dict[str, Any]:
    if result.error is not None:
        error = result.error
        return {"index": index, "status": result.status, **error.body()}
    assert result.record is not None  # a result holds its error or its record
    return {"index": index, "status": result.status, "usage": usage_body(result.record)}


class UsageSummaryApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        parameters=[
            OpenApiParameter("group_by", str, enum=["day", "service"]),
            OpenApiParameter("from", OpenApiTypes.DATE),
            OpenApiParameter("to", OpenApiTypes.DATE),
            OpenApiParameter("test", bool),
        ],
        responses={
            200: inline_serializer("UsageSummary", {"group_by": serializers.CharField(), "rows": serializers.ListField()})
        },
        tags=["usage"],
        summary="Usage totals by day or by service",
        description="Events, quantities and cost over `from`..`to` (dates, both included; the last 30 days by "
        "default), one row per day or per service. Live usage unless `test=true`.",
        examples=[
            OpenApiExample(
                "By service",
                value={
                    "group_by": "service",
                    "from": "2026-03-01",
                    "to": "2026-03-31",
                    "events": 42,
                    "rows": [
                        {
                            "service": "gpt-4o",
                            "events": 42,
                            "quantity": 65100,
                            "input_tokens": 50400,
                            "output_tokens": 14700,
                            "cost": "0.273000000000",
                        }
                    ],
                },
                response_only=True,
            )
        ],
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        group_by = params.get("group_by", "day")
        if group_by not in ("day", "service"):
            raise InvalidRequest("`group_by` is day or service.", details={"group_by": ["Must be day or service."]})
        today = timezone.now().date()
        day_to = _day(params.get("to"), "to") or today
        day_from = _day(params.get("from"), "from") or day_to - timedelta(days=29)
        if day_from > day_to:
            raise InvalidRequest("`from` is after `to`.", details={"from": ["Must not be after `to`."]})
        rows = selectors.usage_summary(
            organization_id=self.tenant.organization.pk,
            group_by=group_by,
            day_from=day_from,
            day_to=day_to,
            test=_flag(params.get("test"), "test"),
        )
        for row in rows:
            row["cost"] = money_str(row["cost"])
            if group_by == "day":
                row["day"] = row["day"].isoformat()
        total = sum((r["events"] for r in rows), 0)
        return Response(
            {"group_by": group_by, "from": day_from.isoformat(), "to": day_to.isoformat(), "events": total, "rows": rows}
        )


def _day(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        day = parse_date(value)
    except ValueError:  # well formed but not a date, e.g. 2026-13-01
        day = None
    if day is None:
        raise InvalidRequest(f"`{name}` must be an ISO date.", details={name: ["Invalid date."]})
    return day


class UsageExportApi(TenantMixin, APIView):
    content_negotiation_class = FileNegotiation
    permission_classes = [IsAuthenticated]

    @extend_schema(
        responses={(200, "text/csv"): OpenApiTypes.STR},
        tags=["usage"],
        summary="Download usage as CSV",
        description="The usage records matching the same filters as `GET usage/`, as a CSV file streamed row by row. "
        "For people signed in with a JWT (an API key gets 403).",
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        if self.tenant.user is None:
            raise PermissionRefused("The CSV export is for people signed in with a JWT, not for API keys.")
        records = selectors.usage_list(organization_id=self.tenant.organization.pk, **usage_filters(request))
        rows = usage_csv_rows(keyset.keyset_iterate(records, chunk=EXPORT_CHUNK, first_chunk=EXPORT_FIRST_CHUNK))
        return csv_stream_response(usage_csv_header(), rows, filename="usage.csv")


def tiers_out(stored: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """A price's tiers as the API carries them: `up_to` (null for the last), each rate and the flat fee
    (when there is one) as amount strings with the stored scale, like every other amount."""
    if stored is None:
        return None
    return [
        {name: value if name == "up_to" else money_str(Decimal(value).quantize(MONEY_QUANTUM)) for name, value in tier.items()}
        for tier in stored
    ]


def price_shape(service: Service, price: Price) -> dict[str, Any]:
    """A price row's model and rates: `prices` (per_unit rates, or a package's `unit_price`), `tiers`
    (tiered and volume; null otherwise), `package_size` (package; null otherwise)."""
    return {
        "model": price.model,
        "prices": {name: money_str(value) for name, value in prices_listed(service.calc_method, price).items()},
        "tiers": tiers_out(price.tiers) if price.model in (PriceModel.TIERED, PriceModel.VOLUME) else None,
        "package_size": price.package_size if price.model == PriceModel.PACKAGE else None,
    }


def _tier_field() -> serializers.ListField:
    return serializers.ListField(
        child=serializers.DictField(),
        allow_null=True,
        help_text="Tiered and volume prices: `[{up_to, <the method's price fields>, flat_fee?}]`, `up_to` in the "
        "method's quantity units (null for the last tier), rates in the usual units (per 1M tokens, per 1K characters "
        "or words, per tile, per request). Null for the other models.",
    )


IncludedOutput = inline_serializer(
    "IncludedThisPeriod",
    {
        "quantity": serializers.IntegerField(help_text="What your plan includes each month."),
        "used": serializers.IntegerField(help_text="How much of it this month's usage has used."),
        "left": serializers.IntegerField(help_text="How much is left this month (0 while a plan fee is unpaid)."),
    },
    allow_null=True,
)

SERVICES_EXAMPLE = [
    {
        "slug": "gpt-4o",
        "name": "GPT-4o",
        "calc_method": "TOKENS",
        "model": "per_unit",
        "prices": {"input_price": "2.500000000000", "output_price": "10.000000000000", "cached_input_price": "1.250000000000"},
        "tiers": None,
        "package_size": None,
        "included": None,
    },
    {
        "slug": "translate",
        "name": "Translate",
        "calc_method": "CHAR_COUNT",
        "model": "tiered",
        "prices": {},
        "tiers": [
            {"up_to": 1000000, "unit_price": "0.020000000000"},
            {"up_to": None, "unit_price": "0.010000000000"},
        ],
        "package_size": None,
        "included": {"quantity": 500000, "used": 120000, "left": 380000},
    },
    {
        "slug": "moderation",
        "name": "Moderation",
        "calc_method": "REQUEST",
        "model": "package",
        "prices": {"unit_price": "1.000000000000"},
        "tiers": None,
        "package_size": 1000,
        "included": None,
    },
]


class ServiceListApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        responses={
            200: inline_serializer(
                "ServiceWithPrices",
                {
                    "slug": serializers.CharField(),
                    "name": serializers.CharField(),
                    "calc_method": serializers.CharField(),
                    "model": serializers.ChoiceField(choices=PriceModel.choices, allow_null=True),
                    "prices": serializers.DictField(child=Amount(), allow_null=True),
                    "tiers": _tier_field(),
                    "package_size": serializers.IntegerField(allow_null=True),
                    "included": IncludedOutput,
                },
                many=True,
            )
        },
        tags=["services"],
        summary="Services and their prices for you",
        description="Every active service with the price in force for your organization (your own rates where staff "
        "set some, else your plan's, else the general ones). `model` says how the price works: `per_unit` (every unit "
        "at the same rate), `tiered` (each unit at the rate of the tier it falls in, counting your usage this month), "
        "`volume` (every unit at the rate of the tier your usage this month reaches), `package` (whole packages of "
        "`package_size` units at `unit_price` each). Per-unit rates are in `prices`: `input_price` and `output_price` "
        "per 1,000,000 tokens (TOKENS; with `cached_input_price` per 1,000,000 cached input tokens where one is set, else "
        "cached tokens cost the input price), `unit_price` per 1,000 characters or words, per image tile or per "
        "request; a package's price is `prices.unit_price`; tiered and volume rates are in `tiers`, each up to its "
        "`up_to` units (the last has none). `included` is what your plan includes of the service this month, how much "
        "is used and how much is left (null when your plan includes none). `prices` and `model` are null while a "
        "service has no price yet.",
        examples=[OpenApiExample("Services", value=SERVICES_EXAMPLE, response_only=True)],
    )
    def get(self, request: Request) -> Response:
        organization_id = self.tenant.organization.pk
        rows = selectors.service_list_with_prices(organization_id=organization_id)
        included = selectors.plan_usage_left(organization_id=organization_id)
        body = []
        for service, price in rows:
            shape = price_shape(service, price) if price else {"model": None, "prices": None, "tiers": None, "package_size": None}
            figures = included.get(service.pk)
            body.append(
                {
                    "slug": service.slug,
                    "name": service.name,
                    "calc_method": service.calc_method,
                    **shape,
                    "included": figures._asdict() if figures else None,
                }
            )
        return Response(body)


# --- Holds ----------------------------------------------------------------------------------------

HOLD_FIELDS = frozenset({"service", "idempotency_key", "amount", "expires_in", *ALL_QUANTITY_FIELDS})


def hold_body(hold: Hold, record: UsageRecord | None = None) -> dict[str, Any]:
    body = {
        "id": hold.pk,
        "service": hold.service.slug,
        "amount": money_str(hold.amount),
        "maxima": hold.maxima,
        "status": hold.status,
        "test": hold.test,
        "expires_at": _utc_iso(hold.expires_at),
        "created_at": _utc_iso(hold.created_at),
        "idempotency_key": hold.idempotency_key,
    }
    if record is not None:
        body["usage"] = usage_body(record)
    return body


HoldOutput = inline_serializer(
    "HoldOutput",
    {
        "id": serializers.IntegerField(),
        "service": serializers.CharField(),
        "amount": Amount(),
        "status": serializers.ChoiceField(choices=["active", "captured", "released", "expired"]),
        "test": serializers.BooleanField(),
        "expires_at": serializers.DateTimeField(),
        "usage": UsageOutput(required=False),
    },
)


class HoldCreateApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        request=inline_serializer(
            "HoldInput",
            {
                "service": serializers.CharField(),
                "idempotency_key": serializers.CharField(required=False),
                "amount": Amount(required=False),
                "expires_in": serializers.IntegerField(required=False, min_value=1),
            },
        ),
        responses={201: HoldOutput, 200: HoldOutput},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        tags=["holds"],
        summary="Reserve money before a long or streamed call",
        description="Like a card authorization: reserves `amount` (or the cost of the quantities you give as maxima, "
        "at the price in force) on your wallet until you capture or release it, or it expires (`expires_in` seconds). "
        "No money moves; your `available` balance shrinks. 402 when it does not fit. Idempotent like `POST usage/`.",
        examples=[
            OpenApiExample(
                "Worst case of a chat call",
                value={"service": "gpt-4o", "idempotency_key": "chat-77", "input_tokens": 8000, "output_tokens": 4096},
                request_only=True,
            ),
            OpenApiExample(
                "Held",
                value={
                    "id": 5,
                    "service": "gpt-4o",
                    "amount": "0.060960000000",
                    "status": "active",
                    "test": False,
                    "expires_at": "2026-03-01T09:40:00Z",
                },
                response_only=True,
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        body = _json_object(request.data, HOLD_FIELDS)
        amount_field = Amount(min_value=0, allow_null=True)
        try:
            amount = amount_field.run_validation(body.get("amount")) if body.get("amount") is not None else None
        except serializers.ValidationError as exc:
            raise InvalidRequest("`amount` must be a non-negative decimal string.", details={"amount": exc.detail}) from exc
        expires_in = body.get("expires_in")
        if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, int)):
            raise InvalidRequest(
                "`expires_in` must be an integer number of seconds.", details={"expires_in": ["Must be an integer."]}
            )
        service, key = _service_and_key(body, header_key=request.headers.get(IDEMPOTENCY_HEADER))
        outcome = services.hold_create(
            tenant=self.tenant,
            service=service,
            idempotency_key=key,
            amount=amount,
            maxima=_quantities(body),
            expires_in=expires_in,
        )
        return Response(hold_body(outcome.hold), status=status.HTTP_200_OK if outcome.replayed else status.HTTP_201_CREATED)


class _HoldActionApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated]

    def hold(self, hold_id: int) -> Hold:
        try:
            return selectors.hold_get(organization_id=self.tenant.organization.pk, hold_id=hold_id, test=self.tenant.is_test)
        except Hold.DoesNotExist as exc:
            raise NotFound("No such hold.") from exc


class HoldCaptureApi(_HoldActionApi):
    @extend_schema(
        request=UsageInput,
        responses={201: HoldOutput, 200: HoldOutput},
        tags=["holds"],
        summary="Capture a hold with the actual usage",
        description="Send the quantities actually used; they are priced at the price in force, recorded as one usage "
        "event and debited, and the hold is freed. Usage above the hold is charged in full (it was delivered); "
        "after that, nothing new starts until the balance is topped up. Capturing again answers the first capture.",
        examples=[OpenApiExample("Actual usage", value={"input_tokens": 6200, "output_tokens": 912}, request_only=True)],
    )
    def post(self, request: Request, hold_id: int) -> Response:
        body = _json_object(request.data, ALL_QUANTITY_FIELDS)
        outcome = services.hold_capture(tenant=self.tenant, hold=self.hold(hold_id), data=body)
        return Response(
            hold_body(outcome.hold, outcome.record), status=status.HTTP_200_OK if outcome.replayed else status.HTTP_201_CREATED
        )


class HoldReleaseApi(_HoldActionApi):
    @extend_schema(
        request=None,
        responses={200: HoldOutput},
        tags=["holds"],
        summary="Release a hold without charging",
        description="Frees the reserved money (the call did not happen, or failed); nothing is charged. "
        "409 when the hold was already captured or expired.",
    )
    def post(self, request: Request, hold_id: int) -> Response:
        outcome = services.hold_release(hold=self.hold(hold_id))
        return Response(hold_body(outcome.hold))


# --- Staff: services and prices ------------------------------------------------------------------------


class ServiceAdminApi(APIView):
    permission_classes = [IsAuthenticated, StaffMayChange]
    required_permission = "metering.add_service"

    class Input(serializers.Serializer[Service]):
        slug = serializers.SlugField(max_length=80)
        name = serializers.CharField(max_length=120)
        calc_method = serializers.ChoiceField(choices=CalcMethod.choices)
        active = serializers.BooleanField(default=True)

        class Meta:
            ref_name = "ServiceAdminInput"

    @extend_schema(
        request=Input,
        responses={201: Input},
        tags=["staff"],
        summary="Staff: add a billable service",
        description="A new service with its calculation method (fixed once created). It answers 409 "
        "`price_not_set` to usage until a price is added with `admin/prices/`. Staff with catalogue rights only.",
        examples=[
            OpenApiExample(
                "A chat model",
                value={"slug": "gpt-4o", "name": "GPT-4o", "calc_method": "TOKENS", "active": True},
                request_only=True,
            )
        ],
    )
    def post(self, request: Request) -> Response:
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        service = services.service_create(**data.validated_data)
        return Response(self.Input(service).data, status=status.HTTP_201_CREATED)


class _PriceFields(serializers.Serializer[Any]):
    """A price's rates and model, as staff send them; `price_validate` decides whether they fit."""

    model = serializers.ChoiceField(choices=PriceModel.choices, default=PriceModel.PER_UNIT)
    tiers = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="Tiered and volume: `[{up_to, <the method's price fields>, flat_fee?}]`, `up_to` increasing in the "
        "method's quantity units, the last one null; rates as decimal strings in the usual units.",
    )
    package_size = serializers.IntegerField(required=False, allow_null=True, help_text="Package: quantity units per package.")
    effective_from = serializers.DateTimeField(required=False)
    input_price = Amount(min_value=0, required=False)
    output_price = Amount(min_value=0, required=False)
    cached_input_price = Amount(min_value=0, required=False)
    unit_price = Amount(min_value=0, required=False)


def _price_spec(values: dict[str, Any]) -> PriceSpec:
    return PriceSpec(
        model=values.get("model", PriceModel.PER_UNIT),
        fields={name: values[name] for name in ALL_PRICE_FIELDS if values.get(name) is not None},
        tiers=values.get("tiers"),
        package_size=values.get("package_size"),
        effective_from=values.get("effective_from"),
    )


def staff_price_body(price: Price) -> dict[str, Any]:
    """A price row as the staff API answers it."""
    return {
        "id": price.pk,
        "service": price.service.slug,
        "organization": price.organization.slug if price.organization is not None else None,
        "plan": price.plan.slug if price.plan is not None else None,
        "effective_from": price.effective_from,
        **price_shape(price.service, price),
    }


StaffPriceOutput = inline_serializer(
    "PriceAdminOutput",
    {
        "id": serializers.IntegerField(),
        "service": serializers.CharField(),
        "organization": serializers.CharField(allow_null=True),
        "plan": serializers.CharField(allow_null=True),
        "effective_from": serializers.DateTimeField(),
        "model": serializers.ChoiceField(choices=PriceModel.choices),
        "prices": serializers.DictField(child=Amount()),
        "tiers": _tier_field(),
        "package_size": serializers.IntegerField(allow_null=True),
    },
)

TIERED_PRICE_EXAMPLE = {
    "service": "translate",
    "model": "tiered",
    "tiers": [
        {"up_to": 1000000, "unit_price": "0.02"},
        {"up_to": 10000000, "unit_price": "0.015"},
        {"up_to": None, "unit_price": "0.01", "flat_fee": "5.00"},
    ],
}


class PriceAdminApi(APIView):
    permission_classes = [IsAuthenticated, StaffMayChange]
    required_permission = "metering.add_price"

    class Input(_PriceFields):
        service = serializers.SlugField()
        organization = serializers.SlugField(allow_null=True, required=False)
        plan = serializers.SlugField(allow_null=True, required=False, help_text="A plan's price, for its active subscribers.")

        class Meta:
            ref_name = "PriceAdminInput"

    @extend_schema(
        request=Input,
        responses={201: StaffPriceOutput},
        tags=["staff"],
        summary="Staff: set a price from a date on",
        description="Prices are never edited: a new rate is a new row, in force from `effective_from` (default now), "
        "for every organization, or with `organization` for that one only (it wins over every other price), or with "
        "`plan` for that plan's active subscribers (it wins over the general price); not both. `model` (default "
        "`per_unit`) says how the price works. A `per_unit` price gives exactly the fields of the service's method: "
        "`input_price` and `output_price` for TOKENS (and optionally `cached_input_price`, per 1,000,000 cached input "
        "tokens; without it they cost the input price), `unit_price` otherwise. A `tiered` (each unit at its tier's "
        "rate) or `volume` (every unit at the rate of the tier the month's usage reaches) price gives `tiers` instead: "
        "`[{up_to, <those fields>, flat_fee?}]` with increasing `up_to` in quantity units and the last one null. A "
        "`package` price gives `unit_price` (the price of one package) and `package_size`. Anything else is refused "
        "(400, each faulty field named). Usage already recorded keeps its price. Staff with catalogue rights only.",
        examples=[
            OpenApiExample(
                "New token rates from April",
                value={
                    "service": "gpt-4o",
                    "effective_from": "2026-04-01T00:00:00Z",
                    "input_price": "2.50",
                    "output_price": "10.00",
                    "cached_input_price": "1.25",
                },
                request_only=True,
            ),
            OpenApiExample("Tiered characters", value=TIERED_PRICE_EXAMPLE, request_only=True),
            OpenApiExample(
                "A package of 1,000 requests for a plan",
                value={"service": "moderation", "plan": "team", "model": "package", "unit_price": "1.00", "package_size": 1000},
                request_only=True,
            ),
            OpenApiExample(
                "Created",
                value={
                    "id": 42,
                    "service": "translate",
                    "organization": None,
                    "plan": None,
                    "effective_from": "2026-04-01T00:00:00Z",
                    "model": "tiered",
                    "prices": {},
                    "tiers": [
                        {"up_to": 1000000, "unit_price": "0.020000000000"},
                        {"up_to": 10000000, "unit_price": "0.015000000000"},
                        {"up_to": None, "unit_price": "0.010000000000", "flat_fee": "5.000000000000"},
                    ],
                    "package_size": None,
                },
                response_only=True,
                status_codes=["201"],
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        service = selectors.service_get(slug=values["service"])
        organization = account_selectors.organization_get(slug=values["organization"]) if values.get("organization") else None
        plan = selectors.plan_get(slug=values["plan"]) if values.get("plan") else None
        spec = _price_spec(values)
        price = services.price_create(
            service=service,
            organization_id=organization.pk if organization else None,
            plan_id=plan.pk if plan else None,
            effective_from=spec.effective_from,
            created_by_id=request.user.pk,
            model=spec.model,
            tiers=spec.tiers,
            package_size=spec.package_size,
            **spec.fields,
        )
        return Response(staff_price_body(price), status=status.HTTP_201_CREATED)


# --- Staff: plans ----------------------------------------------------------------------------------------

_PLAN_ACTIONS = {"GET": "view", "HEAD": "view", "OPTIONS": "view"}


class _PlanStaffApi(APIView):
    """Staff who may view plans read them (Support too); creating and changing one needs catalogue rights."""

    permission_classes = [IsAuthenticated, StaffMayChange]

    @property
    def required_permission(self) -> str:
        return f"metering.{_PLAN_ACTIONS.get(self.request.method or '', 'add')}_plan"


class PlanPriceInput(StrictSerializer, _PriceFields):
    class Meta:
        ref_name = "PlanPriceInput"


class PlanInput(StrictSerializer):
    slug = serializers.SlugField(max_length=80)
    name = serializers.CharField(max_length=120, required=False, help_text="Required for a new plan.")
    description = serializers.CharField(required=False, allow_blank=True)
    monthly_fee = Amount(min_value=0, required=False, help_text="Charged at each month's start (a new plan: 0 when left out).")
    public = serializers.BooleanField(required=False, help_text="Customers may choose it (default true).")
    included = serializers.DictField(
        child=serializers.IntegerField(min_value=0, max_value=MAX_COUNT * 1000),
        required=False,
        help_text="Service slug → quantity included each month, in the method's quantity units. Each service given is "
        "set (0: none); the others keep theirs.",
    )
    prices = serializers.DictField(
        child=PlanPriceInput(),
        required=False,
        help_text="Service slug → a new plan price (the fields of `POST admin/prices/`); earlier rows are kept.",
    )

    class Meta:
        ref_name = "PlanAdminInput"


def plan_body(plan: Plan, prices: dict[str, Price]) -> dict[str, Any]:
    """A plan as the staff API answers it."""
    return {
        "slug": plan.slug,
        "name": plan.name,
        "description": plan.description,
        "public": plan.public,
        "monthly_fee": money_str(plan.monthly_fee),
        "included": {allowance.service.slug: allowance.quantity for allowance in sorted(plan.allowances.all(), key=str)},
        "prices": {
            slug: {"id": price.pk, "effective_from": price.effective_from, **price_shape(price.service, price)}
            for slug, price in sorted(prices.items())
        },
        "created_at": plan.created_at,
    }


PlanPriceOutput = inline_serializer(
    "PlanPriceOutput",
    {
        "id": serializers.IntegerField(),
        "effective_from": serializers.DateTimeField(),
        "model": serializers.ChoiceField(choices=PriceModel.choices),
        "prices": serializers.DictField(child=Amount()),
        "tiers": _tier_field(),
        "package_size": serializers.IntegerField(allow_null=True),
    },
)


class PlanOutput(serializers.Serializer[Plan]):
    """Documents the staff API's plan (answers are built by `plan_body`)."""

    slug = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    public = serializers.BooleanField()
    monthly_fee = Amount()
    included = serializers.DictField(child=serializers.IntegerField())
    prices = serializers.DictField(child=PlanPriceOutput)
    created_at = serializers.DateTimeField()

    class Meta:
        ref_name = "PlanAdminOutput"


PLAN_EXAMPLE = {
    "slug": "team",
    "name": "Team",
    "description": "",
    "public": True,
    "monthly_fee": "49.000000000000",
    "included": {"gpt-4o": 2000000, "translate": 500000},
    "prices": {
        "gpt-4o": {
            "id": 77,
            "effective_from": "2026-03-01T00:00:00Z",
            "model": "per_unit",
            "prices": {"input_price": "2.000000000000", "output_price": "8.000000000000"},
            "tiers": None,
            "package_size": None,
        }
    },
    "created_at": "2026-03-01T00:00:00Z",
}


def _plans_answer(plans: list[Plan]) -> list[dict[str, Any]]:
    prices = selectors.plan_prices(plan_ids=[plan.pk for plan in plans])
    return [plan_body(plan, prices[plan.pk]) for plan in plans]


class PlanAdminApi(_PlanStaffApi):
    @extend_schema(
        responses={200: PlanOutput(many=True)},
        tags=["staff"],
        summary="Staff: list plans",
        description="Every plan, public or not, with its monthly fee, what it includes each month per service slug, "
        "and its price per service (the one in force, or the next one when all lie ahead). Staff who may view plans.",
    )
    def get(self, request: Request) -> Response:
        return Response(_plans_answer(selectors.plan_list()))

    @extend_schema(
        request=PlanInput,
        responses={201: PlanOutput, 200: PlanOutput},
        tags=["staff"],
        summary="Staff: create or change a plan",
        description="Creates the plan `slug` (201; `name` required), or changes an existing one (200): its name, fee, "
        "description and visibility when given, the included quantity of each service in `included` (0: none), and a "
        "new plan price for each service in `prices` (the fields of `POST admin/prices/`; prices are never edited, "
        "a change is a new row from its `effective_from`). All or nothing: an unknown service or a price that does not "
        "fit its method answers 400 naming it, and nothing is written. A fee change applies from the next month's "
        "start. Staff with catalogue rights only.",
        examples=[
            OpenApiExample(
                "A plan with included tokens and its own rates",
                value={
                    "slug": "team",
                    "name": "Team",
                    "monthly_fee": "49.00",
                    "included": {"gpt-4o": 2000000, "translate": 500000},
                    "prices": {"gpt-4o": {"input_price": "2.00", "output_price": "8.00"}},
                },
                request_only=True,
            ),
            OpenApiExample("Plan", value=PLAN_EXAMPLE, response_only=True, status_codes=["201", "200"]),
        ],
    )
    def post(self, request: Request) -> Response:
        data = PlanInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        change = plan_services.PlanChange(
            slug=values["slug"],
            name=values.get("name"),
            monthly_fee=values.get("monthly_fee"),
            description=values.get("description"),
            public=values.get("public"),
            included=values.get("included", {}),
            prices={slug: _price_spec(spec) for slug, spec in values.get("prices", {}).items()},
        )
        plan, created = plan_services.plan_save(change=change, created_by_id=request.user.pk)
        answer = _plans_answer([selectors.plan_get(slug=plan.slug)])[0]
        return Response(answer, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class PlanAdminDetailApi(_PlanStaffApi):
    @extend_schema(
        responses={200: PlanOutput},
        tags=["staff"],
        summary="Staff: one plan",
        description="The plan with its monthly fee, what it includes each month per service slug and its price per "
        "service, as in the list. 404 for an unknown slug. Staff who may view plans.",
    )
    def get(self, request: Request, slug: str) -> Response:
        return Response(_plans_answer([selectors.plan_get(slug=slug)])[0])
