"""Celery tasks: load by id, call a service, own the retry policy."""

import logging
from typing import Any

from celery import Task, shared_task
from django.core.cache import cache

from billing_site import metrics
from billing_site.outbound import DestinationRefused, DestinationUnresolved
from payments import alerts, auto_recharge, credits, reconciliation, services
from payments.providers import ProviderUnreachable

logger = logging.getLogger(__name__)
TRANSIENT = (ConnectionError, TimeoutError, OSError)


@shared_task(
    name="payments.tasks.payment_settle", autoretry_for=TRANSIENT, retry_backoff=True, retry_backoff_max=300, max_retries=10
)
def payment_settle(event_id: int) -> str | None:
    payment = services.payment_settle(event_id=event_id)
    return payment.status if payment else None


@shared_task(name="payments.tasks.grants_expire", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def grants_expire() -> int:
    return credits.grants_expire()


@shared_task(name="payments.tasks.payments_sweep")
def payments_sweep() -> dict[str, int]:
    return {**services.payments_sweep(), "refunds_settled": services.refunds_sweep()}


@shared_task(name="payments.tasks.low_balance_alert", bind=True, max_retries=5, retry_backoff=True)
def low_balance_alert(self: Task, organization_id: int, claimed: bool = False, emailed: bool = False) -> bool:
    from payments.models import Wallet

    wallet = (
        Wallet.objects.select_related("organization").get(organization_id=organization_id)
        if claimed
        else alerts.low_balance_claim(organization_id=organization_id)
    )
    if wallet is None:
        return False  # not below the threshold any more, or already alerted for this crossing
    try:
        if not emailed:
            alerts.low_balance_notify(wallet=wallet, webhook=False)
            emailed = True
        alerts.low_balance_notify(wallet=wallet, email=False)
    except Exception as exc:
        if isinstance(exc, DestinationRefused) and not isinstance(exc, DestinationUnresolved):
            # Not retried: the URL points into a private network, and asking again would not change that.
            logger.warning("low-balance webhook of organization %s refused: %s", organization_id, exc)
        else:
            # Retry only what failed: once the people were emailed, a retry is for the webhook alone.
            raise self.retry(exc=exc, kwargs={"organization_id": organization_id, "claimed": True, "emailed": emailed}) from exc
    metrics.LOW_BALANCE_ALERTS.inc()
    return True


def low_balance_alert_enqueue(sender: object, *, organization_id: int, **kwargs: Any) -> None:
    """Receiver of the ledger's `low_balance_crossed_signal` (sent after the debit committed)."""
    try:
        low_balance_alert.delay(organization_id)
    except Exception:  # a broker outage must never fail a debit that already committed
        logger.exception("could not queue the low-balance alert of organization %s", organization_id)


@shared_task(name="payments.tasks.budget_alert", bind=True, max_retries=5, retry_backoff=True)
def budget_alert(self: Task, spend_id: int, level: int = 0, emailed: bool = False) -> int:
    """Alert the level the budget spend row reached, if no alert of it went out this period. A retry
    carries the level it claimed (`level`), so it never claims again, and skips the email once sent."""
    from payments.models import BudgetSpend

    if level:
        spend = BudgetSpend.objects.select_related("budget__api_key", "organization").filter(pk=spend_id).first()
        if spend is None:
            return 0  # the budget was deleted since
    else:
        claimed = alerts.budget_alert_claim(spend_id=spend_id)
        if claimed is None:
            return 0  # no new level, or another run sent it
        spend, level = claimed
    try:
        if not emailed:
            alerts.budget_alert_notify(spend=spend, level=level, webhook=False)
            emailed = True
        alerts.budget_alert_notify(spend=spend, level=level, email=False)
    except Exception as exc:
        if isinstance(exc, DestinationRefused) and not isinstance(exc, DestinationUnresolved):
            logger.warning("budget alert webhook of organization %s refused: %s", spend.organization_id, exc)
        else:
            raise self.retry(exc=exc, kwargs={"spend_id": spend_id, "level": level, "emailed": emailed}) from exc
    metrics.BUDGET_ALERTS.inc()
    return level


def budget_alert_enqueue(sender: object, *, organization_id: int, spend_ids: list[int], **kwargs: Any) -> None:
    """Receiver of the ledger's `budget_alert_signal` (sent after the usage committed): one task per
    spend row, so a retry of one never re-sends another's."""
    for spend_id in spend_ids:
        try:
            budget_alert.delay(spend_id)
        except Exception:  # a broker outage must never fail usage that already committed
            logger.exception("could not queue the budget alert of organization %s", organization_id)


@shared_task(name="payments.tasks.sandbox_webhook_deliver", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=8)
def sandbox_webhook_deliver(payment_id: int, outcome: str) -> int:
    from payments.providers import sandbox

    return sandbox.deliver(payment_id=payment_id, outcome=outcome)


@shared_task(name="payments.tasks.reconcile")
def reconcile() -> dict[str, Any]:
    report = reconciliation.reconciliation_run()
    return {"ok": report.ok, "mismatches": len(report.wallet_mismatches)}


@shared_task(name="payments.tasks.alert_webhook_test")
def alert_webhook_test(organization_id: int) -> bool:
    """The settings page's "Send test alert": one attempt, logged whatever its outcome, never retried."""
    return alerts.alert_webhook_test_send(organization_id=organization_id).delivered


# --- Auto top-up (docs/credits.md) ----------------------------------------------------------------

# Debits below the threshold announce it again and again; one task per organization per this many
# seconds is plenty (the pending payment's unique index is what makes a top-up start only once).
AUTO_RECHARGE_GATE_SECONDS = 30


def auto_recharge_due(sender: object, *, organization_id: int, **kwargs: Any) -> None:
    """Receiver of the ledger's `auto_recharge_due_signal` (sent after the debit committed): cheap,
    the debit never waits for a provider. A cache gate lets one task through per organization."""
    try:
        if not cache.add(f"auto-recharge-due:{organization_id}", 1, timeout=AUTO_RECHARGE_GATE_SECONDS):
            return
    except Exception:  # without the cache, the database still starts at most one top-up
        logger.warning("auto top-up gate unavailable for organization %s", organization_id, exc_info=True)
    try:
        auto_recharge_run.delay(organization_id)
    except Exception:  # a broker outage must never fail a debit that already committed
        logger.exception("could not queue the auto top-up of organization %s", organization_id)


@shared_task(name="payments.tasks.auto_recharge_run")
def auto_recharge_run(organization_id: int) -> str | None:
    """Start the organization's top-up if one is due, then charge it (outside any transaction)."""
    payment = auto_recharge.auto_recharge_start(organization_id=organization_id)
    if payment is None:
        return None
    try:
        return auto_recharge.auto_recharge_charge(payment_id=payment.pk).status
    except ProviderUnreachable:
        auto_recharge_charge.apply_async((payment.pk,), countdown=30)
        return "retrying"


@shared_task(
    name="payments.tasks.auto_recharge_charge",
    autoretry_for=(ProviderUnreachable, *TRANSIENT),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def auto_recharge_charge(payment_id: int) -> str:
    return auto_recharge.auto_recharge_charge(payment_id=payment_id).status


@shared_task(name="payments.tasks.auto_recharge_off_notify", bind=True, max_retries=5, retry_backoff=True)
def auto_recharge_off_notify(self: Task, organization_id: int, emailed: bool = False) -> bool:
    """Tell the owners and admins (and the organization's webhook) that auto top-up turned itself off.
    Queued once, by the decline that turned it off; a retry is for the webhook alone."""
    try:
        if not emailed:
            alerts.auto_recharge_off_notify(organization_id=organization_id, webhook=False)
            emailed = True
        alerts.auto_recharge_off_notify(organization_id=organization_id, email=False)
    except Exception as exc:
        if isinstance(exc, DestinationRefused) and not isinstance(exc, DestinationUnresolved):
            logger.warning("auto top-up webhook of organization %s refused: %s", organization_id, exc)
            return True
        raise self.retry(exc=exc, kwargs={"organization_id": organization_id, "emailed": emailed}) from exc
    return True
