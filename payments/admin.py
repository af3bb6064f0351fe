"""Back office for organizations, wallets and the ledger. Money changes only through the
ledger: the adjustment action writes an `adjustment` transfer with a reason."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.shortcuts import render
from django.urls import path
from django.utils.dateparse import parse_date

from accounts.admin import ApiKeyInline, MembershipInline
from accounts.models import ApiKey, Organization
from accounts.signals import organization_created
from billing_site.admin import LargeTableAdmin, ReadOnlyAdmin, ReadOnlyInline
from billing_site.csv_stream import csv_stream_response
from billing_site.errors import DomainError
from payments import ledger, reconciliation, services
from payments.models import LedgerEntry, Payment, RedemptionCode, Refund, Transfer, Wallet, WebhookEvent


def wallet_settings_save(*, organization: Organization, form: forms.ModelForm) -> None:
    """Apply a wallet form's changed settings through the service, never `wallet.save()`: a whole-row
    save would write back the balance loaded with the form, undoing debits committed since."""
    changed = {name: form.cleaned_data[name] for name in form.changed_data if name in services.WALLET_SETTINGS}
    services.wallet_settings_update(organization_id=organization.pk, **changed)


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

    def save_model(self, request, obj: Organization, form, change) -> None:
        super().save_model(request, obj, form, change)
        if not change:  # born here rather than by sign-up: it opens its wallet the same way
            organization_created.send(sender=Organization, organization=obj)

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
                posting = services.wallet_adjust_by_staff(
                    organization_id=organization.pk,
                    amount=form.cleaned_data["amount"],
                    reason=form.cleaned_data["reason"],
                    staff_id=request.user.pk,
                )
            except ledger.InsufficientBalance:
                self.message_user(request, "Refused: this debit would take the wallet below its limit.", messages.ERROR)
                return None
            self.log_change(
                request, organization, f"Adjusted balance by {form.cleaned_data['amount']}: {form.cleaned_data['reason']}"
            )
            self.message_user(request, f"Adjusted {organization}: balance is now {posting.balance_after}.", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "organization": organization,
            "opts": self.model._meta,
            "title": f"Adjust the balance of {organization}",
        }
        return render(request, "admin/payments/adjust.html", context)

    def has_adjust_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("payments.add_transfer")

    def save_formset(self, request, form, formset, change) -> None:
        if formset.model not in (Wallet, ApiKey):
            super().save_formset(request, form, formset, change)
            return
        # Write only what staff changed: a row loaded with the form is stale by the time it is saved
        # (debits, spend, a revocation may have committed since). Record what formset.save() would
        # have, for the admin's change message.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for row_form in formset.forms:
            if formset.model is Wallet and (row_form.has_changed() or not change):
                wallet_settings_save(organization=form.instance, form=row_form)
            elif formset.model is ApiKey and row_form.has_changed() and row_form.instance.pk is not None:
                row_form.instance.save(update_fields=row_form.changed_data)
            else:
                continue
            formset.changed_objects.append((row_form.instance, row_form.changed_data))


class LedgerEntryInline(ReadOnlyInline):
    model = LedgerEntry
    fields = ("account", "amount", "balance_after", "created_at")


@admin.register(Transfer)
class TransferAdmin(LargeTableAdmin):
    list_display = ["id", "organization", "kind", "reference", "created_by", "created_at"]
    list_filter = ["kind"]
    search_fields = ["reference", "memo", "organization__slug"]
    date_hierarchy = "created_at"  # probed through the created_at index (LargeTableAdmin)
    inlines = [LedgerEntryInline]
    list_select_related = ["organization", "created_by"]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(LargeTableAdmin):
    list_display = ["id", "organization", "account", "amount", "balance_after", "transfer", "created_at"]
    # No date hierarchy: entries have no index that starts with created_at (every debit would pay for
    # two more index entries), and listing a year's months would read every entry of the year. The
    # date filter's choices (today, past 7 days, this month, this year) cost no query of their own.
    list_filter = ["account", "transfer__kind", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["organization__slug", "transfer__reference"]
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

    def save_model(self, request, obj: Wallet, form, change) -> None:
        wallet_settings_save(organization=obj.organization, form=form)


# --- Payments, refunds, codes, reconciliation ----------------------------------------------------------


class WebhookEventInline(ReadOnlyInline):
    model = WebhookEvent
    fields = ("provider", "event_id", "event_type", "received_at", "processed_at")


class RefundInline(ReadOnlyInline):
    model = Refund
    fields = ("amount", "status", "reason", "forced", "provider_reference", "created_by", "created_at")


class RefundForm(forms.Form):
    amount = forms.DecimalField(max_digits=28, decimal_places=12, min_value=Decimal("0.000000000001"))
    reason = forms.CharField(max_length=500, widget=forms.Textarea(attrs={"rows": 3}))
    force = forms.BooleanField(
        required=False, help_text="Refund even if the wallet has already spent the money (goes below available)."
    )


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "organization",
        "provider",
        "amount",
        "currency",
        "status",
        "refunded_amount",
        "created_at",
        "settled_at",
    ]
    list_filter = ["status", "provider"]
    search_fields = ["organization__slug", "provider_reference"]
    date_hierarchy = "created_at"
    list_select_related = ["organization"]
    inlines = [WebhookEventInline, RefundInline]
    actions = ["refund"]

    @admin.action(description="Refund (fully or partly)…", permissions=["refund"])
    def refund(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Refund one payment at a time.", messages.WARNING)
            return None
        payment = queryset.get()
        remaining = payment.amount - payment.refunded_amount
        form = RefundForm(request.POST if "apply" in request.POST else None, initial={"amount": remaining})
        if form.is_valid():
            try:
                refund = services.payment_refund(
                    payment=payment,
                    amount=form.cleaned_data["amount"],
                    reason=form.cleaned_data["reason"],
                    staff=request.user,
                    force=form.cleaned_data["force"],
                )
            except DomainError as error:
                self.message_user(request, f"Refused: {error.message}", messages.ERROR)
                return None
            self.log_change(request, payment, f"Refunded {refund.amount}: {refund.reason}")
            self.message_user(request, f"Refunded {refund.amount} {payment.currency} of payment #{payment.pk}.", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "payment": payment,
            "remaining": remaining,
            "opts": self.model._meta,
            "title": f"Refund payment #{payment.pk}",
        }
        return render(request, "admin/payments/refund.html", context)

    def has_refund_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("payments.add_refund")


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "provider", "event_type", "event_id", "payment", "received_at", "processed_at"]
    list_filter = ["provider", "event_type"]
    search_fields = ["event_id"]
    date_hierarchy = "received_at"


class CodeBatchForm(forms.Form):
    batch = forms.CharField(max_length=100, help_text="A label, e.g. launch-promo-2026.")
    amount = forms.DecimalField(max_digits=28, decimal_places=2, min_value=Decimal("0.01"))
    count = forms.IntegerField(min_value=1, max_value=10_000)
    max_uses = forms.IntegerField(min_value=1, initial=1, help_text="How many organizations may redeem each code.")
    expires_at = forms.DateTimeField(required=False, help_text="YYYY-MM-DD HH:MM (UTC); empty for no expiry.")


@admin.register(RedemptionCode)
class RedemptionCodeAdmin(ReadOnlyAdmin):
    list_display = ["prefix", "batch", "amount", "currency", "uses", "max_uses", "expires_at", "created_by", "created_at"]
    list_filter = ["batch"]
    search_fields = ["batch", "prefix"]
    change_list_template = "admin/payments/redemptioncode/change_list.html"

    def get_urls(self):
        return [
            path("generate/", self.admin_site.admin_view(self.generate_view), name="payments_redemptioncode_generate"),
            *super().get_urls(),
        ]

    def generate_view(self, request):
        """Generate a batch; the codes exist in clear only in the CSV this answers."""
        if not request.user.has_perm("payments.add_redemptioncode"):
            raise PermissionDenied
        form = CodeBatchForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            codes = services.redemption_codes_generate(
                batch=data["batch"],
                amount=data["amount"],
                count=data["count"],
                max_uses=data["max_uses"],
                expires_at=data["expires_at"],
                created_by=request.user,
            )
            first = RedemptionCode.objects.get(digest=services.code_digest(codes[0]))
            self.log_addition(request, first, f"Generated batch {data['batch']}: {len(codes)} codes worth {data['amount']} each")
            rows = ([code, data["amount"], settings.CURRENCY, data["max_uses"], data["expires_at"] or ""] for code in codes)
            return csv_stream_response(
                ["code", "amount", "currency", "max_uses", "expires_at"], rows, filename=f"codes-{data['batch']}.csv"
            )
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "opts": self.model._meta,
            "title": "Generate redemption codes",
        }
        return render(request, "admin/payments/generate_codes.html", context)


def reconciliation_view(request):
    """The back office's reconciliation page: docs/contract.md §2.2's identity over a period, and every wallet."""
    if not request.user.has_perm("payments.view_ledgerentry"):
        raise PermissionDenied
    start = parse_date(request.GET.get("from", "") or "")
    end = parse_date(request.GET.get("to", "") or "")
    report = reconciliation.reconciliation_report(
        start=datetime(start.year, start.month, start.day, tzinfo=UTC) if start else None,
        end=datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1) if end else None,
    )
    context = {**admin.site.each_context(request), "report": report, "title": "Reconciliation", "start": start, "end": end}
    return render(request, "admin/payments/reconciliation.html", context)
