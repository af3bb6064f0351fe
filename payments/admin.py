"""Back office for organizations, wallets and the ledger. Money changes only through the
ledger: the adjustment action writes an `adjustment` transfer with a reason."""

from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.shortcuts import render

from accounts.admin import ApiKeyInline, MembershipInline
from accounts.models import Organization
from payments import ledger
from payments.models import LedgerEntry, Transfer, Wallet


class ReadOnlyAdmin(admin.ModelAdmin):
    """History is never edited: no add, change or delete from the admin (the database refuses too)."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class WalletInline(admin.StackedInline):
    model = Wallet
    can_delete = False
    fields = ["currency", "balance", "held", "available", "credit_limit", "low_balance_threshold"]
    readonly_fields = ["currency", "balance", "held", "available"]

    @admin.display(description="available")
    def available(self, wallet: Wallet) -> Decimal:
        return wallet.available


class AdjustmentForm(forms.Form):
    amount = forms.DecimalField(
        max_digits=28, decimal_places=12, help_text="Signed: positive credits the wallet, negative debits it."
    )
    reason = forms.CharField(max_length=500, widget=forms.Textarea(attrs={"rows": 3}))

    def clean_amount(self):
        amount = self.cleaned_data["amount"]
        if amount == 0:
            raise forms.ValidationError("An adjustment moves a non-zero amount.")
        return amount


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "balance", "held", "created_at"]
    search_fields = ["name", "slug"]
    readonly_fields = ["created_at"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [WalletInline, MembershipInline, ApiKeyInline]
    actions = ["adjust_balance"]
    list_select_related = ["wallet"]

    @admin.display(description="balance")
    def balance(self, organization: Organization) -> Decimal:
        return organization.wallet.balance

    @admin.display(description="held")
    def held(self, organization: Organization) -> Decimal:
        return organization.wallet.held

    @admin.action(description="Adjust balance (with a reason)…", permissions=["adjust"])
    def adjust_balance(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Adjust one organization at a time.", messages.WARNING)
            return None
        organization = queryset.get()
        form = AdjustmentForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            try:
                posting = ledger.wallet_adjust(organization_id=organization.pk, amount=form.cleaned_data["amount"],
                                               reason=form.cleaned_data["reason"], created_by_id=request.user.pk)  # fmt: skip
            except ledger.InsufficientBalance:
                self.message_user(request, "Refused: this debit would take the wallet below its limit.", messages.ERROR)
                return None
            self.log_change(
                request, organization, f"Adjusted balance by {form.cleaned_data['amount']}: {form.cleaned_data['reason']}"
            )
            self.message_user(request, f"Adjusted {organization}: balance is now {posting.balance_after}.", messages.SUCCESS)
            return None
        context = {**self.admin_site.each_context(request), "form": form, "organization": organization, "opts": self.model._meta,
                   "title": f"Adjust the balance of {organization}"}  # fmt: skip
        return render(request, "admin/payments/adjust.html", context)

    def has_adjust_permission(self, request) -> bool:
        return request.user.has_perm("payments.add_transfer")


class LedgerEntryInline(admin.TabularInline):
    model = LedgerEntry
    extra = 0
    can_delete = False
    fields = ["account", "amount", "balance_after", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Transfer)
class TransferAdmin(ReadOnlyAdmin):
    list_display = ["id", "organization", "kind", "reference", "created_by", "created_at"]
    list_filter = ["kind"]
    search_fields = ["reference", "memo", "organization__slug"]
    date_hierarchy = "created_at"
    inlines = [LedgerEntryInline]
    show_full_result_count = False
    list_select_related = ["organization", "created_by"]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["id", "organization", "account", "amount", "balance_after", "transfer", "created_at"]
    list_filter = ["account", "transfer__kind"]
    search_fields = ["organization__slug", "transfer__reference"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    list_select_related = ["organization", "transfer"]


@admin.register(Wallet)
class WalletAdmin(admin.ModelAdmin):
    list_display = ["organization", "currency", "balance", "held", "credit_limit", "low_balance_threshold"]
    search_fields = ["organization__slug", "organization__name"]
    fields = ["organization", "currency", "balance", "held", "credit_limit", "low_balance_threshold"]
    readonly_fields = ["organization", "currency", "balance", "held"]

    def has_add_permission(self, request) -> bool:
        return False  # a wallet opens with its organization

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
