"""Auto top-up (docs/credits.md, "Auto top-up"): its settings, and the off-session recharges it starts.

When a debit leaves available below the threshold, the ledger's `auto_recharge_due_signal` queues
`auto_recharge_run`: in one short transaction, under the organization's AutoRecharge lock
(billing_site/locks.py), it decides against the monthly maximum and inserts the pending auto payment
(a partial unique index keeps exactly one pending per organization, however many tasks race); only
after that commits is the provider called, off-session; the decline (or the provider's reference) is
recorded after. A success is credited by the provider's notification, like any recharge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet, Sum
from django.utils import timezone

from billing_site import locks
from billing_site.errors import InvalidRequest
from billing_site.money import MONEY_QUANTUM, ZERO, currency_exponent
from payments.auto_models import AUTO_RECHARGE_DECLINES_MAX, SANDBOX_METHOD_OK, SANDBOX_METHODS, AutoRecharge
from payments.models import Payment, PaymentStatus, Wallet
from payments.providers import ProviderDeclined, ProviderError, ProviderUnreachable, provider_get, providers_enabled

logger = logging.getLogger(__name__)

AUTO_PROVIDERS = ("sandbox", "stripe")
# Auto payments that count against the monthly maximum: those charged or being charged (a refunded one
# was charged too: counting it keeps what we take from the card within the maximum).
MONTHLY_COUNTED = (
    PaymentStatus.PENDING,
    PaymentStatus.SUCCEEDED,
    PaymentStatus.REFUNDED,
    PaymentStatus.PARTIALLY_REFUNDED,
)
OFF_REASON = f"Turned off after {AUTO_RECHARGE_DECLINES_MAX} declined charges in a row."
TURNED_OFF_REASON = "auto top-up was turned off before the charge"


# --- Reads ---------------------------------------------------------------------------------------------


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month `now` falls in: [start, next start)."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, following


def auto_recharge_get(*, organization_id: int) -> AutoRecharge | None:
    return AutoRecharge.objects.filter(pk=organization_id).first()


def auto_recharge_spent(*, organization_id: int, now: datetime | None = None) -> Decimal:
    """What auto top-up charged (or is charging) this UTC calendar month."""
    start, end = month_bounds(now or timezone.now())
    total = Payment.objects.filter(
        organization_id=organization_id, auto=True, status__in=MONTHLY_COUNTED, created_at__gte=start, created_at__lt=end
    ).aggregate(total=Sum("amount"))["total"]
    return (total or ZERO).quantize(MONEY_QUANTUM)


def auto_payment_list(*, organization_id: int) -> QuerySet[Payment]:
    return Payment.objects.filter(organization_id=organization_id, auto=True).order_by("-created_at", "-pk")


def method_masked(setting: AutoRecharge | None) -> str:
    """The saved method as people may see it: the sandbox's names in full, a card's id by its last 4."""
    if setting is None or not setting.payment_method:
        return ""
    if setting.provider == "sandbox":
        return setting.payment_method
    return f"{setting.payment_method[:3]}…{setting.payment_method[-4:]}"


# --- Settings ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoRechargeInput:
    enabled: bool
    threshold: Decimal
    amount: Decimal
    monthly_max: Decimal
    provider: str
    payment_method: str | None = None  # the sandbox's saved method; a card is saved by staff (back office)


def _validate(data: AutoRechargeInput, *, currency: str, saved: AutoRecharge | None) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    places = currency_exponent(currency)
    quantum = Decimal(1).scaleb(-places)
    for name in ("threshold", "amount", "monthly_max"):
        value = getattr(data, name)
        if not isinstance(value, Decimal) or not value.is_finite():
            errors[name] = ["A decimal amount."]
        elif value < ZERO or (name != "threshold" and value == ZERO):
            errors[name] = ["Zero or more." if name == "threshold" else "More than zero."]
        elif value != value.quantize(quantum):
            errors[name] = [f"At most {places} decimal places."]
    if "amount" not in errors and not settings.RECHARGE_MIN <= data.amount <= settings.RECHARGE_MAX:
        errors["amount"] = [f"Between {settings.RECHARGE_MIN} and {settings.RECHARGE_MAX}."]
    if not errors.keys() & {"amount", "monthly_max"} and data.monthly_max < data.amount:
        errors["monthly_max"] = ["At least the amount of one top-up."]
    if data.provider not in AUTO_PROVIDERS or data.provider not in providers_enabled():
        errors["provider"] = ["Not a payment provider that can charge a saved method here."]
    elif data.provider == "sandbox":
        if data.payment_method is not None and data.payment_method not in SANDBOX_METHODS:
            errors["payment_method"] = [f"One of {', '.join(SANDBOX_METHODS)}."]
    else:
        if data.payment_method is not None:
            errors["payment_method"] = ["A card is saved by our support team, not over the API."]
        elif data.enabled and (
            saved is None or saved.provider != "stripe" or not saved.stripe_customer or not saved.payment_method
        ):
            errors["provider"] = ["No card is saved for off-session charges yet: ask support to save one."]
    return errors


def auto_recharge_update(*, organization_id: int, data: AutoRechargeInput) -> AutoRecharge:
    """Create or change the organization's auto top-up; InvalidRequest (changing nothing) on a bad value.
    Turning it on clears the decline count and the reason it turned itself off; the wallet's
    `auto_recharge_below` follows (the threshold while on, NULL while off). If available is already
    below the threshold, a top-up is queued at once."""
    wallet = Wallet.objects.get(pk=organization_id)
    errors = _validate(data, currency=wallet.currency, saved=auto_recharge_get(organization_id=organization_id))
    if errors:
        raise InvalidRequest(
            "Auto top-up was not changed: " + "; ".join(f"{k}: {v[0]}" for k, v in errors.items()), details=errors
        )
    values = {
        "enabled": data.enabled,
        "threshold": data.threshold,
        "amount": data.amount,
        "monthly_max": data.monthly_max,
        "provider": data.provider,
    }
    with transaction.atomic(durable=True):
        AutoRecharge.objects.bulk_create([AutoRecharge(organization_id=organization_id, **values)], ignore_conflicts=True)
        setting: AutoRecharge = locks.auto_recharge_lock(organization_id=organization_id)
        if data.provider == "sandbox":
            method = data.payment_method or (setting.payment_method if setting.payment_method in SANDBOX_METHODS else None)
            values["payment_method"] = method or SANDBOX_METHOD_OK
            values["stripe_customer"] = ""
        if data.enabled and not setting.enabled:
            values.update(consecutive_declines=0, disabled_reason="")
        AutoRecharge.objects.filter(pk=organization_id).update(**values, updated_at=timezone.now())
        Wallet.objects.filter(pk=organization_id).update(auto_recharge_below=data.threshold if data.enabled else None)
        if data.enabled:
            transaction.on_commit(lambda: _queue_if_below(organization_id))
    return AutoRecharge.objects.get(pk=organization_id)


def auto_recharge_card_save(*, organization_id: int, stripe_customer: str, payment_method: str) -> AutoRecharge:
    """Staff: save a Stripe customer and one of its payment methods for off-session charges (the
    organization's people then turn auto top-up on). Starts turned off, with no amounts chosen yet,
    when the organization has none."""
    if not stripe_customer.startswith("cus_") or not payment_method.startswith(("pm_", "card_", "src_")):
        raise InvalidRequest(
            "A Stripe customer id (cus_…) and a payment method id (pm_…).",
            details={"stripe_customer": ["cus_…"], "payment_method": ["pm_…"]},
        )
    with transaction.atomic():  # the back office calls it inside its own transaction
        placeholder = AutoRecharge(
            organization_id=organization_id,
            enabled=False,
            threshold=ZERO,
            amount=settings.RECHARGE_MIN,
            monthly_max=settings.RECHARGE_MIN,
            provider="stripe",
        )
        AutoRecharge.objects.bulk_create([placeholder], ignore_conflicts=True)
        setting: AutoRecharge = locks.auto_recharge_lock(organization_id=organization_id)
        changes: dict[str, object] = {"stripe_customer": stripe_customer, "payment_method": payment_method, "provider": "stripe"}
        if setting.provider != "stripe" and setting.enabled:
            changes["enabled"] = False  # the sandbox method it charged is gone: people turn it on again
            Wallet.objects.filter(pk=organization_id).update(auto_recharge_below=None)
        AutoRecharge.objects.filter(pk=organization_id).update(**changes, updated_at=timezone.now())
    return AutoRecharge.objects.get(pk=organization_id)


def _queue_if_below(organization_id: int) -> None:
    # Past the signal's cache gate: a person just turned it on, and a debit's announcement a moment
    # before (while it was off) must not hold this one back.
    from payments.tasks import auto_recharge_run

    wallet = Wallet.objects.get(pk=organization_id)
    if wallet.auto_recharge_below is not None and wallet.available < wallet.auto_recharge_below:
        try:
            auto_recharge_run.delay(organization_id)
        except Exception:  # the next debit below the threshold announces it again
            logger.exception("could not queue the auto top-up of organization %s", organization_id)


# --- Starting a top-up ---------------------------------------------------------------------------------


def auto_recharge_start(*, organization_id: int, now: datetime | None = None) -> Payment | None:
    """Insert the one pending auto payment if auto top-up is on, available is below its threshold and
    the month's maximum allows it; answer it, or None (nothing to do, or another one is pending)."""
    now = now or timezone.now()
    with transaction.atomic(durable=True):
        setting: AutoRecharge | None = locks.auto_recharge_lock(organization_id=organization_id)
        if setting is None or not setting.enabled:
            return None
        wallet = Wallet.objects.get(pk=organization_id)
        if wallet.available >= setting.threshold:
            return None
        spent = auto_recharge_spent(organization_id=organization_id, now=now)
        if spent + setting.amount > setting.monthly_max:
            logger.info("auto top-up of organization %s held back by its monthly maximum", organization_id)
            return None
        try:
            with transaction.atomic():
                return Payment.objects.create(
                    organization_id=organization_id,
                    provider=setting.provider,
                    amount=setting.amount,
                    currency=wallet.currency,
                    auto=True,
                    created_at=now,
                )
        except IntegrityError:
            return None  # one is pending already (payment_one_pending_auto_per_org)


def auto_recharge_charge(*, payment_id: int) -> Payment:
    """Charge a pending auto payment to the saved method, outside any transaction and lock, and record
    the answer: the provider's reference (its notification settles it), or a decline. Raises
    ProviderUnreachable without a definitive answer: retry (the provider charges one payment once)."""
    payment = Payment.objects.get(pk=payment_id, auto=True)
    setting = auto_recharge_get(organization_id=payment.organization_id)
    if payment.status != PaymentStatus.PENDING:
        return payment
    if setting is None or not setting.enabled or setting.provider != payment.provider:
        Payment.objects.filter(pk=payment.pk, status=PaymentStatus.PENDING).update(
            status=PaymentStatus.CANCELED, failure_reason=TURNED_OFF_REASON, updated_at=timezone.now()
        )
        payment.refresh_from_db()
        return payment
    try:
        reference = provider_get(payment.provider).charge_saved(
            payment, customer=setting.stripe_customer, payment_method=setting.payment_method
        )
    except ProviderUnreachable:
        raise
    except (ProviderDeclined, ProviderError, KeyError) as exc:
        reason = str(exc) if isinstance(exc, ProviderError) else f"the {payment.provider} provider is not enabled"
        return auto_recharge_declined(payment_id=payment.pk, reason=reason)
    Payment.objects.filter(pk=payment.pk).update(provider_reference=reference, updated_at=timezone.now())
    AutoRecharge.objects.filter(pk=payment.organization_id, consecutive_declines__gt=0).update(consecutive_declines=0)
    payment.refresh_from_db()
    return payment


def auto_recharge_declined(*, payment_id: int, reason: str) -> Payment:
    """Record a declined auto payment once: the payment fails, the decline count grows, and the third
    in a row turns auto top-up off (its owners are told once, after commit)."""
    payment = Payment.objects.get(pk=payment_id, auto=True)
    organization_id = payment.organization_id
    with transaction.atomic(durable=True):
        setting: AutoRecharge | None = locks.auto_recharge_lock(organization_id=organization_id)
        locks.wallet_lock(organization_id=organization_id)
        locked: Payment = locks.payment_lock(payment_id=payment_id)
        # A payment the provider's own notification failed first carries no reason yet: still this decline.
        first_record = locked.status == PaymentStatus.PENDING or (
            locked.status == PaymentStatus.FAILED and not locked.failure_reason
        )
        if not first_record:
            return locked
        Payment.objects.filter(pk=payment_id).update(
            status=PaymentStatus.FAILED, failure_reason=reason[:255], settled_at=timezone.now(), updated_at=timezone.now()
        )
        if setting is not None:
            declines = setting.consecutive_declines + 1
            changes: dict[str, object] = {"consecutive_declines": declines}
            if declines >= AUTO_RECHARGE_DECLINES_MAX and setting.enabled:
                changes.update(enabled=False, disabled_reason=OFF_REASON)
                Wallet.objects.filter(pk=organization_id).update(auto_recharge_below=None)
                transaction.on_commit(lambda: _queue_off_notice(organization_id))
            AutoRecharge.objects.filter(pk=organization_id).update(**changes, updated_at=timezone.now())
    payment.refresh_from_db()
    return payment


def _queue_off_notice(organization_id: int) -> None:
    from payments.tasks import auto_recharge_off_notify

    try:
        auto_recharge_off_notify.delay(organization_id)
    except Exception:  # the setting is off either way; the page shows why
        logger.exception("could not queue the auto top-up notice of organization %s", organization_id)
