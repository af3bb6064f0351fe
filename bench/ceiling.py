"""The framework ceiling for `POST usage/`: a bare Django + DRF view in the same deployment that does
only the debit — the app's own one-statement debit (`usage_sql.DEBIT_SQL`), with the caller and the
price found in process memory as a perfect cache would find them. No authentication, throttling,
validation beyond DRF's parser and a two-field serializer, or pricing code; the project's middleware
and database settings are the same, and it is served by the same gunicorn processes as the app
(`bench.ceiling_settings` adds its URL). `make bench` loads it with the same wrk script as (2)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.urls import include, path
from django.utils import timezone
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey, Organization
from accounts.services import api_key_digest
from accounts.tenancy import Tenant
from metering.calculators import Quantities
from metering.services.events import PricedEvent, UsageEvent
from metering.services.usage_sql import usage_debit_in_one_statement

CEILING_PATH = "bench/ceiling/usage/"

_tenants: dict[str, Tenant] = {}  # key digest → tenant, filled once per process
_prices: dict[str, tuple[int, str, Decimal]] = {}  # service slug → (id, calc_method, unit price)


class CeilingInput(serializers.Serializer[Any]):
    service = serializers.CharField()
    idempotency_key = serializers.CharField(max_length=255)


def _tenant(request: Request) -> Tenant:
    secret = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    digest = api_key_digest(secret)
    tenant = _tenants.get(digest)
    if tenant is None:
        row = ApiKey.objects.only("pk", "organization_id", "mode").get(digest=digest)
        key = ApiKey(pk=row.pk, organization_id=row.organization_id, mode=row.mode)
        tenant = _tenants[digest] = Tenant(organization=Organization(pk=row.organization_id), user=None, api_key=key, role=None)
    return tenant


def _price(slug: str) -> tuple[int, str, Decimal]:
    price = _prices.get(slug)
    if price is None:
        from metering.models import Price

        row = Price.objects.select_related("service").filter(service__slug=slug, organization=None).latest("effective_from")
        assert row.unit_price is not None, "the bench service is priced per request"
        price = _prices[slug] = (row.service_id, row.service.calc_method, row.unit_price)
    return price


class CeilingUsageView(APIView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    throttle_classes: list[Any] = []
    parser_classes = [JSONParser]

    def post(self, request: Request) -> Response:
        body = CeilingInput(data=request.data)
        body.is_valid(raise_exception=True)
        tenant = _tenant(request)
        service_id, calc_method, unit_price = _price(body.validated_data["service"])
        event = UsageEvent(
            service=body.validated_data["service"], idempotency_key=body.validated_data["idempotency_key"], data={}
        )
        priced = PricedEvent(
            event, service_id, calc_method, Quantities(quantity=1), {"unit_price": unit_price}, unit_price, "ceiling"
        )
        record = usage_debit_in_one_statement(priced, tenant=tenant, now=timezone.now())
        return Response(
            {"id": record.pk, "cost": str(record.cost), "balance_after": str(record.balance_after)},
            status=status.HTTP_201_CREATED,
        )


urlpatterns = [
    path(CEILING_PATH, CeilingUsageView.as_view()),
    path("", include("billing_site.urls")),
]
