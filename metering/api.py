"""REST API for services, usage and holds (docs/contract.md §3)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
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
from accounts.tenancy import TenantMixin
from billing_site import keyset
from billing_site.api.fields import IDEMPOTENCY_KEY_PARAMETER, Amount
from billing_site.api.limits import IDEMPOTENCY_HEADER
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
from billing_site.money import money_str
from metering import selectors, services
from metering.calculators import ALL_QUANTITY_FIELDS
from metering.exports import EXPORT_CHUNK, EXPORT_FIRST_CHUNK, usage_csv_header, usage_csv_rows
from metering.models import CalcMethod, Hold, Service, UsageRecord
from metering.pricing import ALL_PRICE_FIELDS, prices_listed
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
                    "prices": serializers.DictField(child=Amount(), allow_null=True),
                },
                many=True,
            )
        },
        tags=["services"],
        summary="Services and their prices for you",
        description="Every active service with the prices in force for your organization (your own rates where "
        "staff set some): `input_price` and `output_price` per 1,000,000 tokens (TOKENS; with `cached_input_price` "
        "per 1,000,000 cached input tokens where one is set, else cached tokens cost the input price), `unit_price` "
        "per 1,000 characters or words, per image tile or per request. `prices` is null while a service has no price yet.",
        examples=[
            OpenApiExample(
                "Services",
                value=[
                    {
                        "slug": "gpt-4o",
                        "name": "GPT-4o",
                        "calc_method": "TOKENS",
                        "prices": {
                            "input_price": "2.500000000000",
                            "output_price": "10.000000000000",
                            "cached_input_price": "1.250000000000",
                        },
                    },
                    {
                        "slug": "moderation",
                        "name": "Moderation",
                        "calc_method": "REQUEST",
                        "prices": {"unit_price": "0.000500000000"},
                    },
                ],
                response_only=True,
            )
        ],
    )
    def get(self, request: Request) -> Response:
        rows = selectors.service_list_with_prices(organization_id=self.tenant.organization.pk)
        return Response(
            [
                {
                    "slug": service.slug,
                    "name": service.name,
                    "calc_method": service.calc_method,
                    "prices": {name: money_str(value) for name, value in prices_listed(service.calc_method, price).items()}
                    if price
                    else None,
                }
                for service, price in rows
            ]
        )


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


class PriceAdminApi(APIView):
    permission_classes = [IsAuthenticated, StaffMayChange]
    required_permission = "metering.add_price"

    class Input(serializers.Serializer[Any]):
        service = serializers.SlugField()
        organization = serializers.SlugField(allow_null=True, required=False)
        effective_from = serializers.DateTimeField(required=False)
        input_price = Amount(min_value=0, required=False)
        output_price = Amount(min_value=0, required=False)
        cached_input_price = Amount(min_value=0, required=False)
        unit_price = Amount(min_value=0, required=False)

        class Meta:
            ref_name = "PriceAdminInput"

    @extend_schema(
        request=Input,
        responses={
            201: inline_serializer(
                "PriceAdminOutput",
                {
                    "id": serializers.IntegerField(),
                    "service": serializers.CharField(),
                    "organization": serializers.CharField(allow_null=True),
                    "effective_from": serializers.DateTimeField(),
                    "prices": serializers.DictField(),
                },
            )
        },
        tags=["staff"],
        summary="Staff: set a price from a date on",
        description="Prices are never edited: a new rate is a new row, in force from `effective_from` (default now), "
        "for every organization or, with `organization`, for that one only (it wins over the general price). Give "
        "exactly the fields of the service's method: `input_price` and `output_price` for TOKENS (and optionally "
        "`cached_input_price`, per 1,000,000 cached input tokens; without it they cost the input price), `unit_price` "
        "otherwise; anything else is refused (400). Usage already recorded keeps its price. Staff with catalogue rights only.",
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
            )
        ],
    )
    def post(self, request: Request) -> Response:
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        service = selectors.service_get(slug=values["service"])
        organization = account_selectors.organization_get(slug=values["organization"]) if values.get("organization") else None
        price = services.price_create(
            service=service,
            organization_id=organization.pk if organization else None,
            effective_from=values.get("effective_from"),
            created_by_id=request.user.pk,
            **{name: values.get(name) for name in ALL_PRICE_FIELDS},
        )
        return Response(
            {
                "id": price.pk,
                "service": service.slug,
                "organization": organization.slug if organization else None,
                "effective_from": price.effective_from,
                "prices": {name: money_str(value) for name, value in prices_listed(service.calc_method, price).items()},
            },
            status=status.HTTP_201_CREATED,
        )
