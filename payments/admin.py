"""Back office for organizations, wallets and the ledger. Money changes only through the
ledger: the adjustment action writes an `adjustment` transfer with a reason."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import F
from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils.dateparse import parse_date
from django.utils.html import format_html, format_html_join

from accounts import services as account_services
from accounts.admin import ApiKeyInline, MembershipInline
from accounts.models import ApiKey, Organization
from accounts.signals import organization_created
from billing_site.admin import (
    AMOUNT_INPUTS,
    AmountInput,
    LargeTableAdmin,
    OrganizationFilter,
    ReadOnlyAdmin,
    ReadOnlyInline,
    money_cell,
)
from billing_site.csv_stream import csv_stream_response
from billing_site.errors import DomainError
from billing_site.money import money_format
from payments import (
    auto_recharge,
    credit_admin,  # noqa: F401 - registers the grants' and budgets' admins
    ledger,
    receipts,
    reconciliation,
    selectors,
    services,
)
from payments.models import (
    GRANT_PRIORITY_DEFAULT,
    GRANT_PRIORITY_MAX,
    GRANT_PRIORITY_MIN,
    STRIPES_MAX,
    STRIPES_MIN,
    AutoRecharge,
    LedgerEntry,
    Payment,
    Receipt,
    RedemptionCode,
    Refund,
    Transfer,
    Wallet,
    WebhookEvent,
)


def wallet_settings_save(*, organization: Organization, form: forms.ModelForm) -> None:
    """Apply a wallet form's changed settings through the service, never `wallet.save()`: a whole-row
    save would write back the balance loaded with the form, undoing debits committed since."""
    changed = {name: form.cleaned_data[name] for name in form.changed_data if name in services.WALLET_SETTINGS}
    services.wallet_settings_update(organization_id=organization.pk, **changed)


class WalletSettingsForm(forms.ModelForm):
    """The wallet's settings; `stripes` (high-volume) is applied by the ledger, which moves the money."""

    stripes = forms.IntegerField(
        min_value=0,
        max_value=STRIPES_MAX,
        required=False,
        help_text=f"High-volume: keep the balance in this many stripes ({STRIPES_MIN}..{STRIPES_MAX}) besides the wallet "
        "row, so that many debits proceed in parallel; 0 for one row. Changing it moves the money under the wallet's locks.",
    )

    class Meta:
        model = Wallet
        fields = ["credit_limit", "low_balance_threshold"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["stripes"].initial = self.instance.stripes if self.instance.pk else 0

    def clean_stripes(self) -> int:
        stripes: int | None = self.cleaned_data["stripes"]
        if stripes is None:  # left empty: as it is
            return int(self.fields["stripes"].initial)
        if stripes and stripes < STRIPES_MIN:
            raise forms.ValidationError(f"0 for one row, or {STRIPES_MIN} to {STRIPES_MAX} stripes.")
        return stripes


class WalletFigures:
    """Read-only wallet amounts, formatted with the wallet's currency (the exact figure on hover)."""

    @admin.display(description="balance")
    def balance_shown(self, wallet: Wallet) -> str:
        return money_cell(wallet.balance, wallet.currency)

    @admin.display(description="held")
    def held_shown(self, wallet: Wallet) -> str:
        return money_cell(wallet.held, wallet.currency)

    @admin.display(description="available")
    def available_shown(self, wallet: Wallet) -> str:
        return money_cell(wallet.available, wallet.currency)


class WalletInline(WalletFigures, admin.StackedInline):
    model = Wallet
    form = WalletSettingsForm
    can_delete = False
    fields = ["currency", "balance_shown", "held_shown", "available_shown", "credit_limit", "low_balance_threshold", "stripes"]
    readonly_fields = ["currency", "balance_shown", "held_shown", "available_shown"]
    formfield_overrides = AMOUNT_INPUTS


class AdjustmentForm(forms.Form):
    amount = forms.DecimalField(
        max_digits=28,
        decimal_places=12,
        widget=AmountInput,
        help_text="Signed: positive credits the wallet, negative debits it.",
    )
    reason = forms.CharField(
        max_length=500, widget=forms.Textarea(attrs={"rows": 3}), help_text="Kept with the ledger entry; the customer may see it."
    )

    def clean_amount(self):
        amount = self.cleaned_data["amount"]
        if amount == 0:
            raise forms.ValidationError("An adjustment moves a non-zero amount.")
        return amount


class BalanceFilter(admin.SimpleListFilter):
    """Organizations whose wallet needs a look."""

    title = "balance"
    parameter_name = "balance"

    def lookups(self, request, model_admin):
        return [
            ("negative", "Negative"),
            ("low", "Below its low-balance threshold"),
            ("zero", "Zero"),
            ("positive", "Positive"),
        ]

    def queryset(self, request, queryset):
        match self.value():
            case "negative":
                return queryset.filter(wallet__balance__lt=0)
            case "low":
                return queryset.filter(wallet__balance__lt=F("wallet__held") + F("wallet__low_balance_threshold"))
            case "zero":
                return queryset.filter(wallet__balance=0)
            case "positive":
                return queryset.filter(wallet__balance__gt=0)
        return queryset


ORGANIZATION_KEPT = (
    "An organization cannot be deleted: its ledger, payments and usage are kept for good. "
    "Remove its members or revoke its API keys instead."
)
RECENT_ROWS = 10
ORGANIZATION_BILLING = "Printed on the organization's receipts and statements issued from now on (issued ones keep theirs)."


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "balance", "available", "credit_limit", "created_at"]
    list_filter = [BalanceFilter]
    search_fields = ["name", "slug"]
    readonly_fields = ["created_at"]
    prepopulated_fields = {"slug": ["name"]}
    fieldsets = [
        (None, {"fields": ["name", "slug", "created_at"]}),
        ("Rate limits", {"fields": ["requests_per_minute", "batch_events_per_minute"]}),
        ("Billing details", {"fields": ["billing_name", "billing_address", "tax_id"], "description": ORGANIZATION_BILLING}),
    ]
    inlines = [WalletInline, MembershipInline, ApiKeyInline]
    actions = ["adjust_balance"]
    list_select_related = ["wallet"]
    show_full_result_count = False

    def save_model(self, request, obj: Organization, form, change) -> None:
        # Stored as the customers' own form stores it (a browser sends \r\n between lines).
        obj.billing_address = account_services.billing_address_normalize(obj.billing_address)
        super().save_model(request, obj, form, change)
        if not change:  # born here rather than by sign-up: it opens its wallet the same way
            organization_created.send(sender=Organization, organization=obj)

    @admin.display(description="balance", ordering="wallet__balance")
    def balance(self, organization: Organization) -> str:
        return money_cell(organization.wallet.balance, organization.wallet.currency)

    @admin.display(description="available")
    def available(self, organization: Organization) -> str:
        return money_cell(organization.wallet.available, organization.wallet.currency)

    @admin.display(description="credit limit")
    def credit_limit(self, organization: Organization) -> str:
        return money_cell(organization.wallet.credit_limit, organization.wallet.currency)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def delete_view(self, request, object_id, extra_context=None):
        self.message_user(request, ORGANIZATION_KEPT, messages.ERROR)
        return redirect("admin:accounts_organization_change", object_id)

    def get_urls(self):
        return [
            path(
                "<int:organization_id>/adjust/", self.admin_site.admin_view(self.adjust_view), name="accounts_organization_adjust"
            ),
            *super().get_urls(),
        ]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:  # the customer hub: the wallet and what moved it lately
            context.update(
                wallet=obj.wallet,
                recent_entries=selectors.ledger_entry_list(organization_id=obj.pk)[:RECENT_ROWS],
                recent_payments=selectors.payment_list(organization_id=obj.pk)[:RECENT_ROWS],
                can_adjust=self.has_adjust_permission(request),
                can_grant=request.user.has_perm("payments.add_creditgrant"),
                # Shown in the page rather than as an inline: an inline's formset would be part of every save.
                recent_grants=selectors.grant_list(organization_id=obj.pk)[:RECENT_ROWS],
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def adjust_view(self, request, organization_id: int):
        """The "Adjust balance" button of the organization's page."""
        if not self.has_adjust_permission(request):
            raise PermissionDenied
        organization = get_object_or_404(Organization.objects.select_related("wallet"), pk=organization_id)
        outcome = self._adjust(request, organization, submitted="amount" in request.POST)
        if outcome is True:
            return redirect("admin:accounts_organization_change", organization.pk)
        return self._adjust_form(request, organization, outcome, as_action=False)

    @admin.action(description="Adjust balance (with a reason)…", permissions=["adjust"])
    def adjust_balance(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Adjust one organization at a time.", messages.WARNING)
            return None
        organization = queryset.select_related("wallet").get()
        outcome = self._adjust(request, organization, submitted="apply" in request.POST)
        return None if outcome is True else self._adjust_form(request, organization, outcome, as_action=True)

    def _adjust(self, request, organization: Organization, *, submitted: bool) -> bool | AdjustmentForm:
        """Post the adjustment when the form is valid (True); otherwise answer the form to show."""
        form = AdjustmentForm(request.POST if submitted else None)
        if not form.is_valid():
            return form
        amount, reason = form.cleaned_data["amount"], form.cleaned_data["reason"]
        try:
            posting = services.wallet_adjust_by_staff(
                organization_id=organization.pk, amount=amount, reason=reason, staff_id=request.user.pk
            )
        except ledger.InsufficientBalance:
            form.add_error("amount", "Refused: this debit would take the wallet below its limit.")
            return form
        self.log_change(request, organization, f"Adjusted balance by {amount}: {reason}")
        currency = organization.wallet.currency
        self.message_user(
            request,
            f"Adjusted {organization} by {money_format(amount, currency)}: balance is now "
            f"{money_format(posting.balance_after, currency)}.",
            messages.SUCCESS,
        )
        return True

    def _adjust_form(self, request, organization: Organization, form, *, as_action: bool):
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "organization": organization,
            "wallet": organization.wallet,
            "as_action": as_action,
            "opts": self.model._meta,
            "original": organization,
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
    fields = ("account", "stripe", "amount_shown", "balance_after_shown", "created_at")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("organization__wallet")

    @admin.display(description="amount")
    def amount_shown(self, entry: LedgerEntry) -> str:
        return money_cell(entry.amount, entry.organization.wallet.currency)

    @admin.display(description="balance after")
    def balance_after_shown(self, entry: LedgerEntry) -> str:
        return money_cell(entry.balance_after, entry.organization.wallet.currency)


@admin.register(Transfer)
class TransferAdmin(LargeTableAdmin):
    list_display = ["id", "organization", "kind", "reference", "created_by", "created_at"]
    list_filter = [OrganizationFilter, "kind"]
    search_fields = ["reference", "memo", "organization__slug"]
    date_hierarchy = "created_at"  # probed through the created_at index (LargeTableAdmin)
    inlines = [LedgerEntryInline]
    list_select_related = ["organization", "created_by"]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(LargeTableAdmin):
    list_display = ["id", "organization", "account", "stripe", "amount_shown", "balance_after_shown", "transfer", "created_at"]
    # No date hierarchy: entries have no index that starts with created_at (every debit would pay for
    # two more index entries), and listing a year's months would read every entry of the year. The
    # date filter's choices (today, past 7 days, this month, this year) cost no query of their own.
    list_filter = [OrganizationFilter, "account", "transfer__kind", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["organization__slug", "transfer__reference"]
    list_select_related = ["organization__wallet", "transfer"]

    @admin.display(description="amount")
    def amount_shown(self, entry: LedgerEntry) -> str:
        return money_cell(entry.amount, entry.organization.wallet.currency)

    @admin.display(description="balance after")
    def balance_after_shown(self, entry: LedgerEntry) -> str:
        return money_cell(entry.balance_after, entry.organization.wallet.currency)


@admin.register(Wallet)
class WalletAdmin(WalletFigures, admin.ModelAdmin):
    form = WalletSettingsForm
    list_display = [
        "organization",
        "balance_shown",
        "held_shown",
        "available_shown",
        "credit_limit_shown",
        "threshold_shown",
        "stripes",
    ]
    search_fields = ["organization__slug", "organization__name"]
    fields = [
        "organization",
        "currency",
        "balance_shown",
        "held_shown",
        "available_shown",
        "credit_limit",
        "low_balance_threshold",
        "stripes",
    ]
    readonly_fields = ["organization", "currency", "balance_shown", "held_shown", "available_shown"]
    formfield_overrides = AMOUNT_INPUTS
    list_select_related = ["organization"]
    show_full_result_count = False

    @admin.display(description="credit limit")
    def credit_limit_shown(self, wallet: Wallet) -> str:
        return money_cell(wallet.credit_limit, wallet.currency)

    @admin.display(description="low-balance threshold")
    def threshold_shown(self, wallet: Wallet) -> str:
        return money_cell(wallet.low_balance_threshold, wallet.currency)

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
    fields = ("amount_shown", "status", "reason", "forced", "provider_reference", "created_by", "created_at")

    @admin.display(description="amount")
    def amount_shown(self, refund: Refund) -> str:
        return money_cell(refund.amount, refund.payment.currency)


class RefundForm(forms.Form):
    amount = forms.DecimalField(max_digits=28, decimal_places=12, min_value=Decimal("0.000000000001"), widget=AmountInput)
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
        "auto",
        "amount_shown",
        "status",
        "refunded_shown",
        "created_at",
        "settled_at",
        "receipt_number",
    ]
    list_filter = [OrganizationFilter, "status", "provider", "auto"]
    search_fields = ["organization__slug", "provider_reference"]
    date_hierarchy = "created_at"
    list_select_related = ["organization", "receipt"]
    inlines = [WebhookEventInline, RefundInline]
    actions = ["refund"]
    show_full_result_count = False
    fields = [
        "organization",
        "provider",
        "auto",
        "amount_shown",
        "status",
        "refunded_shown",
        "provider_reference",
        "failure_reason",
        "livemode",
        "checkout_url",
        "transfer",
        "created_by",
        "created_at",
        "settled_at",
        "receipt_shown",
    ]
    readonly_fields = ["amount_shown", "refunded_shown", "receipt_shown"]

    @admin.display(description="receipt")
    def receipt_number(self, payment: Payment) -> str:
        receipt = getattr(payment, "receipt", None)
        return receipts.receipt_number_display(receipt.number) if receipt else "—"

    @admin.display(description="receipt")
    def receipt_shown(self, payment: Payment) -> str:
        receipt = Receipt.objects.filter(payment_id=payment.pk).first()
        if receipt is None:
            return "None: only a credited payment has a receipt."
        return receipt_download_link(receipt)

    def get_urls(self):
        return [
            path(
                "<int:payment_id>/receipt.pdf",
                self.admin_site.admin_view(self.receipt_view),
                name="payments_payment_receipt",
            ),
            *super().get_urls(),
        ]

    def receipt_view(self, request, payment_id: int):
        """The payment's receipt as the customer downloads it, for staff who may view payments (Support too)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            receipt = receipts.receipt_get_for_staff(payment_id=payment_id)
        except Receipt.DoesNotExist as exc:
            raise Http404("This payment has no receipt.") from exc
        return receipts.receipt_download(receipt=receipt)

    @admin.display(description="amount", ordering="amount")
    def amount_shown(self, payment: Payment) -> str:
        return money_cell(payment.amount, payment.currency)

    @admin.display(description="refunded")
    def refunded_shown(self, payment: Payment) -> str:
        return money_cell(payment.refunded_amount, payment.currency)

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


def receipt_download_link(receipt: Receipt) -> str:
    return format_html(
        '{} · <a href="{}" data-testid="receipt-download">Download receipt</a>',
        receipts.receipt_number_display(receipt.number),
        reverse("admin:payments_payment_receipt", args=[receipt.payment_id]),
    )


@admin.register(Receipt)
class ReceiptAdmin(ReadOnlyAdmin):
    """Receipts, as numbered when their payments were credited. Nothing is added, changed or deleted
    here (the database refuses too); whoever may view payments may view and download their receipts."""

    list_display = ["number_shown", "organization", "payment_link", "issued_at", "download"]
    list_filter = [OrganizationFilter]
    search_fields = ["organization__slug", "payment__provider_reference"]
    date_hierarchy = "issued_at"
    list_select_related = ["organization"]
    fields = ["number_shown", "organization", "payment_link", "issued_at", "download"]
    readonly_fields = ["number_shown", "organization", "payment_link", "issued_at", "download"]
    ordering = ["-issued_at", "-id"]
    show_full_result_count = False

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.has_perm("payments.view_payment") or super().has_view_permission(request, obj)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    @admin.display(description="number", ordering="number")
    def number_shown(self, receipt: Receipt) -> str:
        return receipts.receipt_number_display(receipt.number)

    @admin.display(description="payment")
    def payment_link(self, receipt: Receipt) -> str:
        return format_html(
            '<a href="{}">#{}</a>', reverse("admin:payments_payment_change", args=[receipt.payment_id]), receipt.payment_id
        )

    @admin.display(description="PDF")
    def download(self, receipt: Receipt) -> str:
        return format_html(
            '<a href="{}">Download receipt</a>', reverse("admin:payments_payment_receipt", args=[receipt.payment_id])
        )


class AutoRechargeCardForm(forms.ModelForm):
    """Staff save a Stripe customer and its payment method for off-session charges (the organization's
    people choose the amounts and turn it on); the service writes them."""

    class Meta:
        model = AutoRecharge
        fields = ["organization", "stripe_customer", "payment_method"]
        help_texts = {
            "stripe_customer": "The organization's Stripe customer (cus_…).",
            "payment_method": "A payment method attached to that customer and set up for off-session use (pm_…).",
        }

    def clean(self) -> dict:
        data = super().clean() or {}
        if not str(data.get("stripe_customer", "")).startswith("cus_"):
            self.add_error("stripe_customer", "A Stripe customer id: cus_…")
        if not str(data.get("payment_method", "")).startswith(("pm_", "card_", "src_")):
            self.add_error("payment_method", "A Stripe payment method id: pm_…")
        return data


AUTO_HISTORY_SHOWN = 50


@admin.register(AutoRecharge)
class AutoRechargeAdmin(admin.ModelAdmin):
    form = AutoRechargeCardForm
    list_display = [
        "organization",
        "enabled",
        "threshold_shown",
        "amount_shown",
        "monthly_max_shown",
        "provider",
        "consecutive_declines",
        "disabled_reason",
        "updated_at",
    ]
    list_filter = ["enabled", "provider"]
    search_fields = ["organization__slug", "organization__name"]
    list_select_related = ["organization__wallet"]
    settings_shown = [
        "enabled",
        "threshold_shown",
        "amount_shown",
        "monthly_max_shown",
        "provider",
        "consecutive_declines",
        "disabled_reason",
        "spent_this_month",
        "updated_at",
        "history",
    ]

    def get_fields(self, request: HttpRequest, obj: AutoRecharge | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("organization", "stripe_customer", "payment_method")
        return ("organization", "stripe_customer", "payment_method", *self.settings_shown)

    def get_readonly_fields(self, request: HttpRequest, obj: AutoRecharge | None = None) -> list[str]:
        return self.settings_shown if obj is None else ["organization", *self.settings_shown]

    def has_delete_permission(self, request: HttpRequest, obj: AutoRecharge | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: AutoRecharge, form: forms.ModelForm, change: bool) -> None:
        saved = auto_recharge.auto_recharge_card_save(
            organization_id=obj.organization_id,
            stripe_customer=form.cleaned_data["stripe_customer"],
            payment_method=form.cleaned_data["payment_method"],
        )
        obj.__dict__.update({f.attname: getattr(saved, f.attname) for f in AutoRecharge._meta.concrete_fields})

    @admin.display(description="threshold")
    def threshold_shown(self, setting: AutoRecharge) -> str:
        return money_cell(setting.threshold, setting.organization.wallet.currency)

    @admin.display(description="amount")
    def amount_shown(self, setting: AutoRecharge) -> str:
        return money_cell(setting.amount, setting.organization.wallet.currency)

    @admin.display(description="monthly maximum")
    def monthly_max_shown(self, setting: AutoRecharge) -> str:
        return money_cell(setting.monthly_max, setting.organization.wallet.currency)

    @admin.display(description="charged this month (UTC)")
    def spent_this_month(self, setting: AutoRecharge) -> str:
        currency = setting.organization.wallet.currency
        return money_cell(auto_recharge.auto_recharge_spent(organization_id=setting.organization_id), currency)

    @admin.display(description="auto top-ups (newest first)")
    def history(self, setting: AutoRecharge) -> str:
        payments = auto_recharge.auto_payment_list(organization_id=setting.organization_id)[:AUTO_HISTORY_SHOWN]
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">#{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:payments_payment_change", args=[p.pk]),
                    p.pk,
                    p.created_at.strftime("%Y-%m-%d %H:%M"),
                    money_format(p.amount, p.currency),
                    p.provider,
                    p.status,
                    p.failure_reason or p.provider_reference,
                )
                for p in payments
            ),
        )
        if not payments:
            return "None yet."
        return format_html(
            '<table data-testid="auto-history"><thead><tr><th>payment</th><th>created</th><th>amount</th><th>provider</th>'
            "<th>status</th><th>reason / reference</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )


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
    grant_priority = forms.IntegerField(
        min_value=GRANT_PRIORITY_MIN,
        max_value=GRANT_PRIORITY_MAX,
        initial=GRANT_PRIORITY_DEFAULT,
        required=False,
        help_text="The redeemed credit's burn priority, 1–100; lower burns first.",
    )
    grant_expires_days = forms.IntegerField(
        min_value=1,
        max_value=services.GRANT_EXPIRES_DAYS_MAX,
        required=False,
        help_text="The redeemed credit expires this many days after its redemption; empty for never.",
    )


@admin.register(RedemptionCode)
class RedemptionCodeAdmin(ReadOnlyAdmin):
    list_display = ["prefix", "batch", "amount_shown", "uses", "max_uses", "expires_at", "created_by", "created_at"]
    list_filter = ["batch"]
    search_fields = ["batch", "prefix"]
    change_list_template = "admin/payments/redemptioncode/change_list.html"
    list_select_related = ["created_by"]

    @admin.display(description="amount")
    def amount_shown(self, code: RedemptionCode) -> str:
        return money_cell(code.amount, code.currency)

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
                grant_priority=GRANT_PRIORITY_DEFAULT if data["grant_priority"] is None else data["grant_priority"],
                grant_expires_days=data["grant_expires_days"],
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
    period = {
        "start": datetime(start.year, start.month, start.day, tzinfo=UTC) if start else None,
        "end": datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1) if end else None,
    }
    # The whole ledger is what the front page reports on: record it there as the beat task does.
    whole = start is None and end is None
    report = reconciliation.reconciliation_run() if whole else reconciliation.reconciliation_report(**period)
    context = {
        **admin.site.each_context(request),
        "report": report,
        "title": "Reconciliation",
        "start": start,
        "end": end,
        "currency": settings.CURRENCY,
    }
    return render(request, "admin/payments/reconciliation.html", context)
