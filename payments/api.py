"""REST API: balance, ledger, and staff adjustments."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Organization
from accounts.tenancy import IsOrganizationManager, TenantMixin
from billing_site.api.pagination import paginated_response
from billing_site.api.staff import StaffMayChange
from billing_site.errors import InvalidRequest, NotFound
from billing_site.money import money_str
from payments import ledger, selectors
from payments.models import LedgerEntry, Wallet


def balance_body(wallet: Wallet) -> dict:
    return {
        "organization": wallet.organization.slug,
        "currency": wallet.currency,
        "balance": money_str(wallet.balance),
        "available": money_str(wallet.available),
        "held": money_str(wallet.held),
        "credit_limit": money_str(wallet.credit_limit),
        "low_balance_threshold": money_str(wallet.low_balance_threshold),
    }


Amount = serializers.DecimalField(max_digits=28, decimal_places=12)


class BalanceApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: inline_serializer("Balance", {
        "organization": serializers.CharField(), "currency": serializers.CharField(), "balance": Amount, "available": Amount,
        "held": Amount, "credit_limit": Amount, "low_balance_threshold": Amount})})  # fmt: skip
    def get(self, request):
        return Response(balance_body(selectors.wallet_get(organization_id=self.tenant.organization.pk)))


class LedgerEntryOutput(serializers.ModelSerializer):
    kind = serializers.CharField(source="transfer.kind")
    reference = serializers.CharField(source="transfer.reference")
    memo = serializers.CharField(source="transfer.memo")
    amount = serializers.DecimalField(max_digits=28, decimal_places=12)
    balance_after = serializers.DecimalField(max_digits=28, decimal_places=12)

    class Meta:
        model = LedgerEntry
        ref_name = "LedgerEntry"
        fields = ["id", "transfer_id", "kind", "reference", "memo", "amount", "balance_after", "created_at"]


class LedgerApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    @extend_schema(responses={200: LedgerEntryOutput(many=True)})
    def get(self, request):
        entries = selectors.ledger_entry_list(organization_id=self.tenant.organization.pk)
        return paginated_response(request=request, view=self, queryset=entries, serializer_class=LedgerEntryOutput)


class AdjustApi(APIView):
    """Staff: a signed manual adjustment with a mandatory reason (an `adjustment` transfer)."""

    permission_classes = [IsAuthenticated, StaffMayChange]
    required_permission = "payments.add_transfer"

    class Input(serializers.Serializer):
        amount = serializers.DecimalField(max_digits=28, decimal_places=12)
        reason = serializers.CharField(max_length=500)

        class Meta:
            ref_name = "AdjustInput"

    @extend_schema(request=Input, responses={201: inline_serializer("AdjustOutput", {
        "transfer_id": serializers.IntegerField(), "balance_after": Amount})})  # fmt: skip
    def post(self, request, slug: str):
        organization = Organization.objects.filter(slug=slug).first()
        if organization is None:
            raise NotFound("No such organization.")
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        if data.validated_data["amount"] == 0:
            raise InvalidRequest("An adjustment moves a non-zero amount.", details={"amount": ["Must not be zero."]})
        posting = ledger.wallet_adjust(organization_id=organization.pk, amount=data.validated_data["amount"],
                                       reason=data.validated_data["reason"], created_by_id=request.user.pk)  # fmt: skip
        return Response({"transfer_id": posting.transfer_id, "balance_after": money_str(posting.balance_after)}, status=201)
