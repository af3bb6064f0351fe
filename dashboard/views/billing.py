"""Recharge through a provider's checkout, payment history, and a payment's live status."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing_site.csv_stream import csv_stream_response
from billing_site.errors import DomainError
from billing_site.money import money_str
from dashboard import forms, selectors
from dashboard.context import dashboard_view, page
from dashboard.templatetags.dashboard import label, money_exact, money_format, plain_amount, tone
from payments import auto_recharge, receipts
from payments import selectors as payment_selectors
from payments import services as payment_services
from payments.models import Payment, PaymentStatus, Receipt

PAYMENTS_PER_PAGE = 20
STATEMENT_LINES = 25
QUICK_AMOUNTS = ["10", "25", "50", "100", "250"]


@never_cache
@require_http_methods(["GET", "POST"])
@dashboard_view(managers_only=True)
def billing(request, current):
    wallet = payment_selectors.wallet_get(organization_id=current.organization.pk)
    # A fresh idempotency key per rendering of the form: a double click or a resubmitted POST
    # answers the same payment instead of opening a second one.
    form = forms.RechargeForm(
        request.POST or None, currency=wallet.currency, initial={"idempotency_key": uuid.uuid4().hex, "amount": "25"}
    )
    if request.method == "POST" and form.is_valid():
        try:
            payment, _ = payment_services.payment_recharge_start(
                organization=current.organization,
                user=request.user,
                amount=form.cleaned_data["amount"],
                provider=form.cleaned_data["provider"],
                idempotency_key=f"dashboard:{form.cleaned_data['idempotency_key']}",
            )
        except DomainError as error:
            form.add_error("amount" if "amount" in error.details else None, error.message)
        else:
            if payment.status == PaymentStatus.PENDING and payment.checkout_url:
                return redirect(payment.checkout_url)
            return redirect("dashboard:payment", payment_id=payment.pk)
    return _billing_page(request, current, wallet=wallet, form=form)


def _billing_page(request, current, *, wallet, form, redeem_form=None, auto_form=None):
    payments = Paginator(payment_selectors.payment_list(organization_id=current.organization.pk), PAYMENTS_PER_PAGE)
    statement = payment_selectors.wallet_statement(
        organization_id=current.organization.pk,
        tz=timezone.get_current_timezone(),
        before=_cursor(request.GET.get("before")),
        size=STATEMENT_LINES,
    )
    context = {
        "form": form,
        "redeem_form": redeem_form or forms.RedeemForm(),
        "wallet": wallet,
        "payments": payments.get_page(request.GET.get("page")),
        "statement": statement,
        "statement_older": statement.older,
        "statement_paged": "before" in request.GET,
        "quick_amounts": QUICK_AMOUNTS,
        **_auto_context(current, auto_form),
    }
    failed = form.errors or any(f is not None and f.errors for f in (redeem_form, auto_form))
    return page(request, "dashboard/billing.html", context, status=400 if failed else 200)


STATEMENT_CSV_HEADER = [
    "day",
    "newest_at",
    "oldest_at",
    "type",
    "entries",
    "amount",
    "balance_after",
    "currency",
    "reference",
    "memo",
]


@require_GET
@dashboard_view(managers_only=True)
def transactions_export(request, current):
    """The whole transaction history as CSV, lines as on the page (a day's usage is one line), every
    stored digit, times in the reader's zone; streamed from the ledger through csv_stream."""
    tz = timezone.get_current_timezone()
    wallet = payment_selectors.wallet_get(organization_id=current.organization.pk)
    rows = (
        [
            line.day.isoformat(),
            timezone.localtime(line.newest_at, tz).isoformat(),
            timezone.localtime(line.oldest_at, tz).isoformat(),
            line.kind,
            line.entries,
            money_str(line.amount),
            money_str(line.balance_after),
            wallet.currency,
            line.reference,
            line.memo,
        ]
        for line in payment_selectors.wallet_statement_all(organization_id=current.organization.pk, tz=tz)
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    filename = f"transactions-{current.organization.slug}-{stamp}.csv"
    return csv_stream_response(STATEMENT_CSV_HEADER, rows, filename=filename)


def _cursor(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() and len(text) < 19 else None


@require_POST
@dashboard_view(managers_only=True)
def redeem(request, current):
    """Credit the wallet with a promotional code; a refused code changes nothing and says why."""
    redeem_form = forms.RedeemForm(request.POST)
    if redeem_form.is_valid():
        try:
            posting = payment_services.code_redeem(
                organization=current.organization, user=request.user, code=redeem_form.cleaned_data["code"]
            )
        except DomainError as error:
            redeem_form.add_error("code", error.message)
        else:
            wallet = payment_selectors.wallet_get(organization_id=current.organization.pk)
            messages.success(request, f"Code redeemed: {money_format(posting.amount, wallet.currency)} added to your balance.")
            return redirect("dashboard:billing")
    wallet = payment_selectors.wallet_get(organization_id=current.organization.pk)
    form = forms.RechargeForm(currency=wallet.currency, initial={"idempotency_key": uuid.uuid4().hex, "amount": "25"})
    return _billing_page(request, current, wallet=wallet, form=form, redeem_form=redeem_form)


AUTO_PAYMENTS_SHOWN = 10


def _auto_context(current, auto_form) -> dict:
    organization_id = current.organization.pk
    setting = auto_recharge.auto_recharge_get(organization_id=organization_id)
    if auto_form is None:
        initial: dict[str, object] = {
            "threshold": "10",
            "amount": "50",
            "monthly_max": "200",
            "provider": "sandbox",
            "payment_method": "pm_sandbox_ok",
        }
        if setting is not None:
            initial = {
                "enabled": setting.enabled,
                "threshold": plain_amount(setting.threshold),
                "amount": plain_amount(setting.amount),
                "monthly_max": plain_amount(setting.monthly_max),
                "provider": setting.provider,
                "payment_method": setting.payment_method if setting.provider == "sandbox" else "pm_sandbox_ok",
            }
        auto_form = forms.AutoRechargeForm(initial=initial)
    return {
        "auto_form": auto_form,
        "auto_setting": setting,
        "auto_method": auto_recharge.method_masked(setting),
        "auto_spent": auto_recharge.auto_recharge_spent(organization_id=organization_id),
        "auto_payments": auto_recharge.auto_payment_list(organization_id=organization_id)[:AUTO_PAYMENTS_SHOWN],
    }


@require_POST
@dashboard_view(managers_only=True)
def auto_recharge_update(request, current):
    """Turn auto top-up on or off and change its amounts; a refusal changes nothing and says why."""
    auto_form = forms.AutoRechargeForm(request.POST)
    if auto_form.is_valid():
        data = auto_form.cleaned_data
        try:
            auto_recharge.auto_recharge_update(
                organization_id=current.organization.pk,
                data=auto_recharge.AutoRechargeInput(
                    enabled=data["enabled"],
                    threshold=data["threshold"],
                    amount=data["amount"],
                    monthly_max=data["monthly_max"],
                    provider=data["provider"],
                    payment_method=(data["payment_method"] or None) if data["provider"] == "sandbox" else None,
                ),
            )
        except DomainError as error:
            forms.service_error_add(auto_form, error)
        else:
            messages.success(request, "Auto top-up is on." if data["enabled"] else "Auto top-up is off.")
            return redirect(f"{reverse('dashboard:billing')}#auto-recharge")
    wallet = payment_selectors.wallet_get(organization_id=current.organization.pk)
    form = forms.RechargeForm(currency=wallet.currency, initial={"idempotency_key": uuid.uuid4().hex, "amount": "25"})
    return _billing_page(request, current, wallet=wallet, form=form, auto_form=auto_form)


def _payment(current, payment_id: int) -> Payment:
    try:
        return selectors.payment_get(organization_id=current.organization.pk, payment_id=payment_id)
    except Payment.DoesNotExist as exc:
        raise Http404 from exc


@require_GET
@dashboard_view(managers_only=True)
def payment(request, current, payment_id: int):
    """Where the provider's checkout sends the payer back (`?result=success|cancel`)."""
    payment = _payment(current, payment_id)
    wallet = payment_selectors.wallet_get(organization_id=current.organization.pk)
    result = request.GET.get("result")
    receipt = receipts.receipt_find(organization_id=current.organization.pk, payment_id=payment.pk)
    receipt_number = receipts.receipt_number_display(receipt.number) if receipt else None
    context = {"payment": payment, "wallet": wallet, "result": result, "receipt_number": receipt_number}
    return page(request, "dashboard/payment.html", context)


@never_cache
@require_GET
@dashboard_view(managers_only=True, document=True)
def payment_receipt(request, current, payment_id: int):
    """The payment's receipt as a PDF download; the 404 page for another organization's payment and
    for one not credited (it has no receipt)."""
    try:
        receipt = receipts.receipt_get(organization_id=current.organization.pk, payment_id=payment_id)
    except Receipt.DoesNotExist as exc:
        raise Http404 from exc
    return receipts.receipt_download(receipt=receipt)


@never_cache
@require_GET
@dashboard_view(managers_only=True)
def payment_status(request, current, payment_id: int):
    """A payment's status and the wallet's balance, polled by the payment pages every 2 s."""
    payment = _payment(current, payment_id)
    wallet = payment_selectors.wallet_get(organization_id=current.organization.pk)
    return JsonResponse(
        {
            "id": payment.pk,
            "status": payment.status,
            "status_label": label(payment.status),
            "tone": tone(payment.status),
            "final": payment.status != PaymentStatus.PENDING,
            "amount": money_str(payment.amount),
            "balance": money_str(wallet.balance),
            "currency": wallet.currency,
            "balance_display": money_format(wallet.balance, wallet.currency),
            "balance_exact": money_exact(wallet.balance),
            "available_display": money_format(wallet.available, wallet.currency),
            "available_exact": money_exact(wallet.available),
        }
    )
