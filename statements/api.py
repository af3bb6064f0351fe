"""REST API: the organization's monthly statements, as JSON and as PDF and CSV files (owners and admins)."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.tenancy import IsOrganizationManager, TenantMixin
from billing_site.api.fields import Amount
from billing_site.api.negotiation import FileNegotiation
from billing_site.api.pagination import PAGE_PARAMETERS, paginated, paginated_response
from billing_site.api.throttling import DocumentRateThrottle, PrincipalRateThrottle
from billing_site.errors import NotFound
from metering.models import Service
from statements import render, selectors
from statements.models import Statement, StatementLine

WHO = "Owners and admins only (an API key or a member gets 403)."


class StatementOutput(serializers.ModelSerializer[Statement]):
    opening_balance = Amount()
    closing_balance = Amount()

    class Meta:
        model = Statement
        ref_name = "Statement"
        fields = ["id", "number", "period_start", "period_end", "currency", "opening_balance", "closing_balance", "issued_at"]


class StatementLineOutput(serializers.ModelSerializer[StatementLine]):
    service: serializers.SlugRelatedField[Service] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True, allow_null=True
    )
    service_name = serializers.CharField(source="service.name", default=None, allow_null=True)
    amount = Amount(help_text="Signed: what these movements added to the wallet.")

    class Meta:
        model = StatementLine
        ref_name = "StatementLine"
        fields = ["kind", "service", "service_name", "transfers", "amount"]


class StatementSummaryRowOutput(serializers.Serializer[Any]):
    category = serializers.CharField()
    # A field named like Field.label, the attribute: DRF takes declared fields out of the class body.
    label = serializers.CharField()  # type: ignore[assignment]
    service = serializers.CharField(source="service_slug", allow_null=True)
    service_name = serializers.CharField(allow_null=True)
    transfers = serializers.IntegerField()
    amount = Amount()

    class Meta:
        ref_name = "StatementSummaryRow"


class StatementSummaryOutput(serializers.Serializer[Any]):
    opening_balance = Amount()
    closing_balance = Amount()
    rows = StatementSummaryRowOutput(many=True)

    class Meta:
        ref_name = "StatementSummary"


class StatementDetailOutput(StatementOutput):
    lines = StatementLineOutput(many=True, read_only=True)
    summary = serializers.SerializerMethodField()

    class Meta(StatementOutput.Meta):
        ref_name = "StatementDetail"
        fields = [*StatementOutput.Meta.fields, "lines", "summary"]

    @extend_schema_field(StatementSummaryOutput)
    def get_summary(self, statement: Statement) -> dict[str, Any]:
        return StatementSummaryOutput(selectors.statement_summary(statement)).data


def _statement(view: TenantMixin, statement_id: int) -> Statement:
    statement = selectors.statement_get(organization_id=view.tenant.organization.pk, statement_id=statement_id)
    if statement is None:
        raise NotFound("No such statement.")
    return statement


class StatementListApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    @extend_schema(
        operation_id="v1_statements_list",
        parameters=PAGE_PARAMETERS,
        responses={200: paginated(StatementOutput, "StatementPage")},
        tags=["balance"],
        summary="List your monthly statements",
        description="One statement per closed UTC month, newest first, numbered 1, 2, 3… per organization without "
        "gaps. `opening_balance` and `closing_balance` are exact decimal strings in `currency`; a month's statement "
        f"is issued after it closes and never changes. {WHO}",
    )
    def get(self, request: Request) -> Response:
        statements = selectors.statement_list(organization_id=self.tenant.organization.pk)
        return paginated_response(request=request, view=self, queryset=statements, serializer_class=StatementOutput)


class StatementDetailApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    @extend_schema(
        responses={200: StatementDetailOutput},
        tags=["balance"],
        summary="One statement, line by line",
        description="The statement with its `lines` (one per kind of movement; usage one per service, `service` "
        "null for usage no record names), each the exact sum of the month's ledger entries, and its `summary` "
        "in the categories the PDF shows (every category present, 0 without movements). The lines, and the "
        f"summary's rows, sum exactly to `closing_balance − opening_balance`. {WHO}",
    )
    def get(self, request: Request, statement_id: int) -> Response:
        return Response(StatementDetailOutput(_statement(self, statement_id)).data)


class StatementPdfApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]
    throttle_classes = [PrincipalRateThrottle, DocumentRateThrottle]
    content_negotiation_class = FileNegotiation

    @extend_schema(
        responses={(200, "application/pdf"): OpenApiResponse(OpenApiTypes.BINARY, description="The statement as a PDF file.")},
        tags=["balance"],
        summary="Download a statement as PDF",
        description="The statement as a printable PDF (an attachment named `statement-<organization>-S-000007.pdf`). "
        f"Amounts are rounded to the currency's usual decimals; the JSON and the CSV carry every digit. {WHO}",
    )
    def get(self, request: Request, statement_id: int) -> HttpResponse:
        return render.statement_download(statement=_statement(self, statement_id), fmt="pdf")


class StatementCsvApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]
    throttle_classes = [PrincipalRateThrottle, DocumentRateThrottle]
    content_negotiation_class = FileNegotiation

    @extend_schema(
        responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.BINARY, description="The statement as a UTF-8 CSV file.")},
        tags=["balance"],
        summary="Download a statement as CSV",
        description="The statement's exact figures as CSV: an `opening_balance` row, one `line` row per statement line, "
        f"a `closing_balance` row; every cell quoted (RFC 4180), amounts with every stored digit. {WHO}",
    )
    def get(self, request: Request, statement_id: int) -> HttpResponse:
        return render.statement_download(statement=_statement(self, statement_id), fmt="csv")
