"""REST API: credit grants (what customers see; staff make them) and budgets (docs/credits.md)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts.api import StrictSerializer
from accounts.tenancy import IsOrganizationManager, TenantMixin
from billing_site.api.fields import Amount
from billing_site.api.pagination import PAGE_PARAMETERS, Pagination, paginated, paginated_response
from billing_site.api.staff import StaffMayChange
from payments import budgets, credits, selectors
from payments.models import GRANT_PRIORITY_DEFAULT, BudgetMode, BudgetPeriod, CreditGrant, GrantCategory, GrantSource

# --- Grants ---------------------------------------------------------------------------------------


class GrantOutput(serializers.ModelSerializer[CreditGrant]):
    amount = Amount()
    remaining = Amount()
    expires_soon = serializers.SerializerMethodField(
        help_text="True while the grant still holds credit and expires within the notice period (7 days by default)."
    )

    class Meta:
        model = CreditGrant
        ref_name = "CreditGrant"
        fields = ["id", "amount", "remaining", "category", "priority", "expires_at", "source", "created_at", "expires_soon"]

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_expires_soon(self, grant: CreditGrant) -> bool:
        return selectors.grant_expires_soon(grant)


class StaffGrantOutput(GrantOutput):
    class Meta(GrantOutput.Meta):
        ref_name = "StaffCreditGrant"
        fields = [*GrantOutput.Meta.fields, "reason", "transfer_id", "created_by_id"]


GRANT_EXAMPLE = {
    "id": 31,
    "amount": "100.000000000000",
    "remaining": "62.500000000000",
    "category": "promotional",
    "priority": 10,
    "expires_at": "2026-04-01T00:00:00Z",
    "source": "staff",
    "created_at": "2026-03-01T09:30:00Z",
    "expires_soon": False,
}


class GrantListApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="v1_grants_list",
        parameters=PAGE_PARAMETERS,
        responses={200: paginated(GrantOutput, "CreditGrantPage")},
        tags=["balance"],
        summary="Your credit grants",
        description="Credit put into your balance by us (promotional or paid), by a redemption code, a plan or a "
        "recharge, newest first. Usage draws from the grants in the order `priority` (lower first), then soonest "
        "`expires_at` (none last), then oldest; `remaining` is what is left. At `expires_at` the rest is written off "
        "(an `expiry` in your ledger). `expires_soon` is true within 7 days of that. Works with a JWT or an API key.",
        examples=[
            OpenApiExample(
                "Grants", value={"count": 1, "next": None, "previous": None, "results": [GRANT_EXAMPLE]}, response_only=True
            )
        ],
    )
    def get(self, request: Request) -> Response:
        grants = selectors.grant_list(organization_id=self.tenant.organization.pk)
        return paginated_response(request=request, view=self, queryset=grants, serializer_class=GrantOutput)


class AdminGrantApi(APIView):
    permission_classes = [IsAuthenticated, StaffMayChange]

    @property
    def required_permission(self) -> str:
        return "payments.view_creditgrant" if self.request.method == "GET" else "payments.add_creditgrant"

    class Input(StrictSerializer):
        amount = Amount()
        category = serializers.ChoiceField(choices=GrantCategory.choices)
        priority = serializers.IntegerField(required=False, default=GRANT_PRIORITY_DEFAULT, help_text="1–100; lower burns first.")
        expires_at = serializers.DateTimeField(required=False, allow_null=True)
        reason = serializers.CharField(max_length=500)

        class Meta:
            ref_name = "StaffGrantInput"

    @extend_schema(
        operation_id="v1_admin_grants_list",
        parameters=PAGE_PARAMETERS,
        responses={200: paginated(StaffGrantOutput, "StaffCreditGrantPage")},
        tags=["staff"],
        summary="Staff: an organization's credit grants",
        description="Every grant of the organization, newest first, with its reason and transfer. Staff only.",
    )
    def get(self, request: Request, slug: str) -> Response:
        organization = account_selectors.organization_get(slug=slug)
        grants = selectors.grant_list(organization_id=organization.pk)
        return paginated_response(request=request, view=self, queryset=grants, serializer_class=StaffGrantOutput)

    @extend_schema(
        request=Input,
        responses={201: StaffGrantOutput},
        tags=["staff"],
        summary="Staff: grant credit to an organization",
        description="Puts `amount` into the organization's wallet as a credit grant (a `grant` transfer in its ledger, "
        "from `promotions` for promotional credit, from `payments_clearing` for paid credit bought outside the "
        "checkout), with a burn `priority` (1–100, default 50), an optional future `expires_at` and a mandatory "
        "`reason`. Staff with billing rights only.",
        examples=[
            OpenApiExample(
                "Promotional credit",
                value={
                    "amount": "100.00",
                    "category": "promotional",
                    "priority": 10,
                    "expires_at": "2026-04-01T00:00:00Z",
                    "reason": "Launch",
                },
                request_only=True,
            ),
            OpenApiExample(
                "Granted",
                value={
                    **GRANT_EXAMPLE,
                    "remaining": "100.000000000000",
                    "reason": "Launch",
                    "transfer_id": 992,
                    "created_by_id": 3,
                },
                response_only=True,
            ),
        ],
    )
    def post(self, request: Request, slug: str) -> Response:
        organization = account_selectors.organization_get(slug=slug)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        spec = credits.GrantSpec(
            amount=data.validated_data["amount"],
            category=GrantCategory(data.validated_data["category"]),
            priority=data.validated_data["priority"],
            expires_at=data.validated_data.get("expires_at"),
            reason=data.validated_data["reason"],
        )
        grant = credits.grant_create(
            organization_id=organization.pk, spec=spec, created_by_id=request.user.pk, source=GrantSource.STAFF
        )
        return Response(StaffGrantOutput(grant).data, status=201)


# --- Budgets --------------------------------------------------------------------------------------

SCOPE_ORGANIZATION, SCOPE_API_KEY = "organization", "api_key"


class BudgetOutput(serializers.Serializer[Any]):
    id = serializers.IntegerField(source="budget.pk")
    scope = serializers.SerializerMethodField()
    api_key = serializers.IntegerField(source="budget.api_key_id", allow_null=True)
    period = serializers.ChoiceField(source="budget.period", choices=BudgetPeriod.choices)
    amount = Amount(source="budget.amount")
    mode = serializers.ChoiceField(source="budget.mode", choices=BudgetMode.choices)
    spent = Amount(help_text="Spent in the current period.")
    resets_at = serializers.DateTimeField(help_text="When the current period ends and `spent` starts again from 0 (UTC).")
    created_at = serializers.DateTimeField(source="budget.created_at")

    class Meta:
        ref_name = "Budget"

    @extend_schema_field(serializers.ChoiceField(choices=[SCOPE_ORGANIZATION, SCOPE_API_KEY]))
    def get_scope(self, status: budgets.BudgetStatus) -> str:
        return SCOPE_API_KEY if status.budget.api_key_id else SCOPE_ORGANIZATION


BUDGET_EXAMPLE = {
    "id": 7,
    "scope": "api_key",
    "api_key": 12,
    "period": "month",
    "amount": "500.000000000000",
    "mode": "hard",
    "spent": "123.450000000000",
    "resets_at": "2026-04-01T00:00:00Z",
    "created_at": "2026-03-01T09:30:00Z",
}
BUDGETS_DESCRIPTION = (
    "A budget limits usage per UTC calendar `period`: `day`, `week` (from Monday 00:00 UTC) or `month`, for the "
    "whole organization (`scope: organization`) or one live API key (`scope: api_key`, with its id in `api_key`); "
    "one per scope and period. A `hard` budget refuses usage that would pass it (402 `budget_exceeded`, nothing "
    "charged); a `soft` one only alerts. Owners and admins are emailed, and your alert webhook is called "
    "(`budget.threshold`), once per period at 50, 80 and 100 %. `spent` is this period's, `resets_at` its end."
)


class BudgetListCreateApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    class Input(StrictSerializer):
        scope = serializers.ChoiceField(choices=[SCOPE_ORGANIZATION, SCOPE_API_KEY])
        api_key = serializers.IntegerField(
            required=False, allow_null=True, min_value=1, max_value=2**63 - 1, help_text="With `scope: api_key`: the key's id."
        )
        period = serializers.ChoiceField(choices=BudgetPeriod.choices)
        amount = Amount()
        mode = serializers.ChoiceField(choices=BudgetMode.choices, default=BudgetMode.HARD)

        class Meta:
            ref_name = "BudgetCreateInput"

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if attrs["scope"] == SCOPE_API_KEY and attrs.get("api_key") is None:
                raise serializers.ValidationError({"api_key": ["Name the API key of an `api_key` budget."]})
            if attrs["scope"] == SCOPE_ORGANIZATION and attrs.get("api_key") is not None:
                raise serializers.ValidationError({"api_key": ["An organization budget names no API key."]})
            return attrs

    @extend_schema(
        operation_id="v1_budgets_list",
        parameters=PAGE_PARAMETERS,
        responses={200: paginated(BudgetOutput, "BudgetPage")},
        tags=["budgets"],
        summary="Your budgets",
        description=f"{BUDGETS_DESCRIPTION} Owners and admins only.",
    )
    def get(self, request: Request) -> Response:
        paginator = Pagination()
        page = paginator.paginate_queryset(
            budgets.budget_queryset(organization_id=self.tenant.organization.pk), request, view=self
        )
        statuses = budgets.budget_statuses(list(page or []))
        return paginator.get_paginated_response(BudgetOutput(statuses, many=True).data)

    @extend_schema(
        request=Input,
        responses={201: BudgetOutput},
        tags=["budgets"],
        summary="Create a budget",
        description=f"{BUDGETS_DESCRIPTION} A second budget for the same scope and period is refused (400). "
        "Owners and admins only.",
        examples=[
            OpenApiExample(
                "A key's monthly cap",
                value={"scope": "api_key", "api_key": 12, "period": "month", "amount": "500.00", "mode": "hard"},
                request_only=True,
            ),
            OpenApiExample(
                "Organization, daily, soft",
                value={"scope": "organization", "period": "day", "amount": "50.00", "mode": "soft"},
                request_only=True,
            ),
            OpenApiExample("Created", value={**BUDGET_EXAMPLE, "spent": "0.000000000000"}, response_only=True),
        ],
    )
    def post(self, request: Request) -> Response:
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        budget = budgets.budget_create(
            organization_id=self.tenant.organization.pk,
            api_key_id=data.validated_data.get("api_key"),
            period=data.validated_data["period"],
            amount=data.validated_data["amount"],
            mode=data.validated_data["mode"],
        )
        return Response(BudgetOutput(budgets.budget_status(budget=budget)).data, status=201)


class BudgetDetailApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    class Input(StrictSerializer):
        amount = Amount(required=False)
        mode = serializers.ChoiceField(choices=BudgetMode.choices, required=False)

        class Meta:
            ref_name = "BudgetUpdateInput"

    @extend_schema(
        responses={200: BudgetOutput},
        tags=["budgets"],
        summary="One budget",
        description="A budget with this period's `spent` and `resets_at`. Owners and admins only.",
    )
    def get(self, request: Request, budget_id: int) -> Response:
        budget = budgets.budget_get(organization_id=self.tenant.organization.pk, budget_id=budget_id)
        return Response(BudgetOutput(budgets.budget_status(budget=budget)).data)

    @extend_schema(
        request=Input,
        responses={200: BudgetOutput},
        tags=["budgets"],
        summary="Change a budget's amount or mode",
        description="Sets the fields you send (`amount`, `mode`); the next usage is checked against them. A budget's "
        "scope and period do not change: delete it and create another. Owners and admins only.",
        examples=[
            OpenApiExample("Raise it", value={"amount": "750.00"}, request_only=True),
            OpenApiExample("Changed", value={**BUDGET_EXAMPLE, "amount": "750.000000000000"}, response_only=True),
        ],
    )
    def patch(self, request: Request, budget_id: int) -> Response:
        budget = budgets.budget_get(organization_id=self.tenant.organization.pk, budget_id=budget_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        budget = budgets.budget_update(budget=budget, **data.validated_data)
        return Response(BudgetOutput(budgets.budget_status(budget=budget)).data)

    @extend_schema(
        responses={204: None},
        tags=["budgets"],
        summary="Delete a budget",
        description="Usage is no longer limited or counted by it. Owners and admins only.",
    )
    def delete(self, request: Request, budget_id: int) -> Response:
        budget = budgets.budget_get(organization_id=self.tenant.organization.pk, budget_id=budget_id)
        budgets.budget_delete(budget=budget)
        return Response(status=204)
