"""REST API: balance, ledger, and staff adjustments."""

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.parsers import BaseParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts.tenancy import IsOrganizationManager, TenantMixin
from billing_site.api.fields import IDEMPOTENCY_KEY_PARAMETER, Amount
from billing_site.api.limits import IDEMPOTENCY_HEADER
from billing_site.api.negotiation import FileNegotiation
from billing_site.api.pagination import PAGE_PARAMETERS, paginated, paginated_response
from billing_site.api.staff import StaffMayChange
from billing_site.api.throttling import DocumentRateThrottle, PrincipalRateThrottle
from billing_site.errors import DomainError, ErrorCode, NotFound
from billing_site.money import money_str
from payments import auto_recharge, receipts, selectors, services
from payments.models import LedgerEntry, Payment, Receipt, Wallet
from payments.providers import WebhookRefused


def balance_body(wallet: Wallet) -> dict[str, Any]:
    return {
        "organization": wallet.organization.slug,
        "currency": wallet.currency,
        "balance": money_str(wallet.balance),
        "available": money_str(wallet.available),
        "held": money_str(wallet.held),
        "credit_limit": money_str(wallet.credit_limit),
        "low_balance_threshold": money_str(wallet.low_balance_threshold),
    }


class SignatureRefused(DomainError):
    code = ErrorCode.INVALID_SIGNATURE
    message = "The notification was refused."


class BalanceApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        responses={
            200: inline_serializer(
                "Balance",
                {
                    "organization": serializers.CharField(),
                    "currency": serializers.CharField(),
                    "balance": Amount(),
                    "available": Amount(),
                    "held": Amount(),
                    "credit_limit": Amount(),
                    "low_balance_threshold": Amount(),
                },
            )
        },
        tags=["balance"],
        summary="Your balance",
        description="`balance` is what the ledger holds for you; `held` is reserved by open holds; `available = balance − "
        "held` is what new usage may spend, down to `−credit_limit` for a postpaid organization. Amounts are decimal "
        "strings in `currency`. Works with a JWT or an API key.",
        examples=[
            OpenApiExample(
                "Balance",
                value={
                    "organization": "analytical-engines",
                    "currency": "USD",
                    "balance": "120.493000000000",
                    "available": "117.993000000000",
                    "held": "2.500000000000",
                    "credit_limit": "0.000000000000",
                    "low_balance_threshold": "10.000000000000",
                },
                response_only=True,
            )
        ],
    )
    def get(self, request: Request) -> Response:
        return Response(balance_body(selectors.wallet_get(organization_id=self.tenant.organization.pk)))


class LedgerEntryOutput(serializers.ModelSerializer[LedgerEntry]):
    kind = serializers.CharField(source="transfer.kind")
    reference = serializers.CharField(source="transfer.reference")
    memo = serializers.CharField(source="transfer.memo")
    amount = Amount()
    balance_after = Amount(source="wallet_balance_after")

    class Meta:
        model = LedgerEntry
        ref_name = "LedgerEntry"
        fields = ["id", "transfer_id", "kind", "reference", "memo", "amount", "balance_after", "created_at"]


class LedgerApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    @extend_schema(
        operation_id="v1_ledger_list",
        parameters=PAGE_PARAMETERS,
        responses={200: paginated(LedgerEntryOutput, "LedgerEntryPage")},
        tags=["balance"],
        summary="Your transaction history (the ledger)",
        description="Every change of your balance, newest first: recharges, usage, refunds, adjustments and "
        "redemptions, each with its signed `amount` and your `balance_after` it. Entries never change once written, "
        "so this list explains your balance to the last digit. Owners and admins only.",
    )
    def get(self, request: Request) -> Response:
        entries = selectors.ledger_entry_list(organization_id=self.tenant.organization.pk)
        return paginated_response(request=request, view=self, queryset=entries, serializer_class=LedgerEntryOutput)


class AdjustApi(APIView):
    permission_classes = [IsAuthenticated, StaffMayChange]
    required_permission = "payments.add_transfer"

    class Input(serializers.Serializer[Any]):
        amount = Amount()
        reason = serializers.CharField(max_length=500)

        class Meta:
            ref_name = "AdjustInput"

    @extend_schema(
        request=Input,
        responses={
            201: inline_serializer("AdjustOutput", {"transfer_id": serializers.IntegerField(), "balance_after": Amount()})
        },
        tags=["staff"],
        summary="Staff: adjust an organization's balance",
        description="Credits (positive `amount`) or debits (negative) the organization's wallet with a mandatory "
        "`reason`, recorded in its ledger as an `adjustment` with your name. A debit past the wallet's limit is "
        "refused (402). Staff with billing rights only.",
        examples=[
            OpenApiExample("Goodwill credit", value={"amount": "10.00", "reason": "Outage on 3 March"}, request_only=True),
            OpenApiExample("Adjusted", value={"transfer_id": 991, "balance_after": "130.493000000000"}, response_only=True),
        ],
    )
    def post(self, request: Request, slug: str) -> Response:
        organization = account_selectors.organization_get(slug=slug)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        posting = services.wallet_adjust_by_staff(
            organization_id=organization.pk,
            amount=data.validated_data["amount"],
            reason=data.validated_data["reason"],
            staff_id=request.user.pk,
        )
        return Response({"transfer_id": posting.transfer_id, "balance_after": money_str(posting.balance_after)}, status=201)


# --- Recharges, webhooks, codes ---------------------------------------------------------------------


class PaymentOutput(serializers.ModelSerializer[Payment]):
    amount = Amount()
    refunded_amount = Amount()

    class Meta:
        model = Payment
        ref_name = "Payment"
        fields = [
            "id",
            "provider",
            "amount",
            "currency",
            "status",
            "checkout_url",
            "refunded_amount",
            "auto",
            "created_at",
            "settled_at",
        ]


class RechargeApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    class Input(serializers.Serializer[Any]):
        amount = Amount()
        provider = serializers.CharField(max_length=20)

        class Meta:
            ref_name = "RechargeInput"

    @extend_schema(
        request=Input,
        responses={201: PaymentOutput, 200: PaymentOutput},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        tags=["payments"],
        summary="Start a recharge",
        description="Creates a pending payment and answers its `checkout_url`: send the payer there. Your balance is "
        "credited once the provider confirms the payment (its status becomes `succeeded`); poll `payments/{id}/`. "
        "With an `Idempotency-Key` header, a retry answers the first payment (200) instead of starting another. "
        "Owners and admins only.",
        examples=[
            # The sandbox: the provider every deployment has (the schema's fuzz test sends the examples).
            OpenApiExample("Recharge $50", value={"amount": "50.00", "provider": "sandbox"}, request_only=True),
            OpenApiExample(
                "Pending",
                value={
                    "id": 45,
                    "provider": "sandbox",
                    "amount": "50.000000000000",
                    "currency": "USD",
                    "status": "pending",
                    "checkout_url": "https://billing.example.com/sandbox/checkout/…/",
                    "refunded_amount": "0.000000000000",
                    "auto": False,
                    "created_at": "2026-03-01T09:30:00Z",
                    "settled_at": None,
                },
                response_only=True,
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        payment, replayed = services.payment_recharge_start(
            organization=self.tenant.organization,
            user=self.tenant.user,
            amount=data.validated_data["amount"],
            provider=data.validated_data["provider"],
            idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
        )
        return Response(PaymentOutput(payment).data, status=200 if replayed else 201)


class PaymentListApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    @extend_schema(
        operation_id="v1_payments_list",
        parameters=PAGE_PARAMETERS,
        responses={200: paginated(PaymentOutput, "PaymentPage")},
        tags=["payments"],
        summary="List your recharges",
        description="Every recharge, newest first, with its status: `pending`, `succeeded`, `failed`, `canceled`, "
        "and later `refunded` or `partially_refunded` (`refunded_amount` says how much); `auto` marks those auto "
        "top-up charged to the saved payment method. Owners and admins only.",
    )
    def get(self, request: Request) -> Response:
        payments = selectors.payment_list(organization_id=self.tenant.organization.pk)
        return paginated_response(request=request, view=self, queryset=payments, serializer_class=PaymentOutput)


class PaymentDetailApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    @extend_schema(
        responses={200: PaymentOutput},
        tags=["payments"],
        summary="One recharge",
        description="A recharge and its current status; poll it after sending the payer to `checkout_url`. "
        "Owners and admins only.",
    )
    def get(self, request: Request, payment_id: int) -> Response:
        payment = selectors.payment_list(organization_id=self.tenant.organization.pk).filter(pk=payment_id).first()
        if payment is None:
            raise NotFound("No such payment.")
        return Response(PaymentOutput(payment).data)


class ReceiptNotFound(NotFound):
    code = ErrorCode.RECEIPT_NOT_FOUND
    message = "This payment has no receipt: only credited payments have one."


class PaymentReceiptApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]
    throttle_classes = [PrincipalRateThrottle, DocumentRateThrottle]
    content_negotiation_class = FileNegotiation

    @extend_schema(
        operation_id="v1_payments_receipt",
        responses={
            (200, "application/pdf"): OpenApiResponse(OpenApiTypes.BINARY, description="The receipt, a PDF file"),
            404: OpenApiResponse(
                description="`not_found`: no such payment (or another organization's); `receipt_not_found`: the "
                "payment was not credited (pending, failed or canceled), so it has no receipt"
            ),
        },
        tags=["payments"],
        summary="A recharge's receipt (PDF)",
        description="The receipt of a credited recharge, as a PDF to download (`Content-Disposition: attachment`): its "
        "number (`R-000042`, numbered per organization in the order payments were credited), your billing details "
        "(`billing-details/`), the amount and currency, the provider and its reference, when it was paid, and any "
        "refunds with the net paid. Refunded payments keep their receipt. Owners and admins only.",
    )
    def get(self, request: Request, payment_id: int) -> HttpResponse:
        organization = self.tenant.organization
        if not selectors.payment_list(organization_id=organization.pk).filter(pk=payment_id).exists():
            raise NotFound("No such payment.")
        try:
            receipt = receipts.receipt_get(organization_id=organization.pk, payment_id=payment_id)
        except Receipt.DoesNotExist as exc:
            raise ReceiptNotFound() from exc
        return receipts.receipt_download(receipt=receipt)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        if isinstance(response, Response):  # an error: always the JSON body, whatever was asked for
            response.accepted_renderer = JSONRenderer()
            response.accepted_media_type = JSONRenderer.media_type
        return response


class WebhookApi(APIView):
    authentication_classes: list[type[BaseAuthentication]] = []
    permission_classes = [AllowAny]
    parser_classes: list[type[BaseParser]] = []  # the raw body is what the signature covers

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT},
        auth=[],
        tags=["payments"],
        summary="Payment provider notifications",
        description="For payment providers, not for you to call: a signed notification of a payment's outcome. "
        "A bad signature, a stale timestamp, or an amount or currency that differs from the payment answers 400 and "
        "changes nothing; a notification already received answers 200 with `duplicate: true`.",
    )
    def post(self, request: Request, provider: str) -> Response:
        try:
            receipt = services.webhook_receive(provider=provider, body=request.body, headers=request.headers)
        except WebhookRefused as refused:
            raise SignatureRefused(str(refused)) from refused
        return Response({"received": True, "duplicate": receipt.duplicate})


class RedeemApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    class Input(serializers.Serializer[Any]):
        code = serializers.CharField(max_length=64)

        class Meta:
            ref_name = "RedeemInput"

    @extend_schema(
        request=Input,
        responses={201: inline_serializer("RedeemOutput", {"balance_after": Amount(), "amount": Amount()})},
        tags=["payments"],
        summary="Redeem a code",
        description="Credits your wallet with the code's amount (a `redemption` in your ledger). A code works once "
        "per organization, up to its number of uses and until it expires; otherwise 400 `invalid_code`. "
        "Owners and admins only.",
        examples=[
            OpenApiExample("Redeem", value={"code": "TG-7KQ2-M9XW-4HPD"}, request_only=True),
            OpenApiExample(
                "Credited", value={"amount": "25.000000000000", "balance_after": "145.493000000000"}, response_only=True
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        posting = services.code_redeem(
            organization=self.tenant.organization, user=self.tenant.user, code=data.validated_data["code"]
        )
        return Response({"amount": money_str(posting.amount), "balance_after": money_str(posting.balance_after)}, status=201)


# --- Auto top-up -----------------------------------------------------------------------------------------


def auto_recharge_body(*, organization_id: int, currency: str) -> dict[str, Any]:
    setting = auto_recharge.auto_recharge_get(organization_id=organization_id)
    spent = auto_recharge.auto_recharge_spent(organization_id=organization_id)
    return {
        "enabled": bool(setting and setting.enabled),
        "threshold": money_str(setting.threshold) if setting else None,
        "amount": money_str(setting.amount) if setting else None,
        "monthly_max": money_str(setting.monthly_max) if setting else None,
        "provider": setting.provider if setting else None,
        "payment_method": auto_recharge.method_masked(setting),
        "consecutive_declines": setting.consecutive_declines if setting else 0,
        "disabled_reason": setting.disabled_reason if setting else "",
        "spent_this_month": money_str(spent),
        "currency": currency,
    }


class AutoRechargeApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    class Input(serializers.Serializer[Any]):
        enabled = serializers.BooleanField()
        threshold = Amount()
        amount = Amount()
        monthly_max = Amount()
        provider = serializers.CharField(max_length=20)
        payment_method = serializers.CharField(max_length=255, required=False)

        class Meta:
            ref_name = "AutoRechargeInput"

    Output = inline_serializer(
        "AutoRecharge",
        {
            "enabled": serializers.BooleanField(),
            "threshold": Amount(allow_null=True),
            "amount": Amount(allow_null=True),
            "monthly_max": Amount(allow_null=True),
            "provider": serializers.CharField(allow_null=True),
            "payment_method": serializers.CharField(),
            "consecutive_declines": serializers.IntegerField(),
            "disabled_reason": serializers.CharField(),
            "spent_this_month": Amount(),
            "currency": serializers.CharField(),
        },
    )

    @extend_schema(
        operation_id="v1_auto_recharge_read",
        responses={200: Output},
        tags=["payments"],
        summary="Your auto top-up",
        description="Whether auto top-up is on, its `threshold`, `amount` and `monthly_max`, the `provider` and saved "
        "`payment_method` (masked) it charges, how many charges were declined in a row, why it turned itself off "
        "(`disabled_reason`), and what it charged this UTC calendar month (`spent_this_month`). Owners and admins only.",
    )
    def get(self, request: Request) -> Response:
        wallet = selectors.wallet_get(organization_id=self.tenant.organization.pk)
        return Response(auto_recharge_body(organization_id=wallet.organization_id, currency=wallet.currency))

    @extend_schema(
        operation_id="v1_auto_recharge_update",
        request=Input,
        responses={200: Output},
        tags=["payments"],
        summary="Set your auto top-up",
        description="When your available balance falls below `threshold`, `amount` is charged to the saved payment "
        "method, one recharge at a time, never more than `monthly_max` in a UTC calendar month (pending charges "
        "count). After 3 declines in a row it turns itself off and emails the owners. The sandbox offers the saved "
        "methods `pm_sandbox_ok` and `pm_sandbox_decline` (`payment_method`); a card for `stripe` is saved by support. "
        "Owners and admins only.",
        examples=[
            OpenApiExample(
                "Top up $50 below $10",
                value={"enabled": True, "threshold": "10.00", "amount": "50.00", "monthly_max": "200.00", "provider": "sandbox"},
                request_only=True,
            )
        ],
    )
    def put(self, request: Request) -> Response:
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        organization_id = self.tenant.organization.pk
        auto_recharge.auto_recharge_update(
            organization_id=organization_id, data=auto_recharge.AutoRechargeInput(**data.validated_data)
        )
        wallet = selectors.wallet_get(organization_id=organization_id)
        return Response(auto_recharge_body(organization_id=organization_id, currency=wallet.currency))
