import logging
from typing import Any

from celery import shared_task

from metering import services

logger = logging.getLogger(__name__)


@shared_task(name="metering.tasks.holds_expire")
def holds_expire() -> int:
    return services.holds_expire()


@shared_task(name="metering.tasks.usage_retention")
def usage_retention() -> dict[str, Any] | None:
    from metering.retention import usage_retention_scheduled

    result = usage_retention_scheduled()
    return (
        None if result is None else {"exported": result.exported, "deleted": result.deleted, "cutoff": result.cutoff.isoformat()}
    )


@shared_task(name="metering.tasks.volume_true_ups")
def volume_true_ups() -> int:
    from metering.services.true_up import volume_true_ups_run

    return volume_true_ups_run()


@shared_task(name="metering.tasks.subscriptions_renew")
def subscriptions_renew() -> dict[str, int]:
    """Beat, every minute: start each subscription's new period (its fee, once) and collect fees left unpaid."""
    from metering.services import subscriptions

    return subscriptions.subscriptions_renew()


@shared_task(name="metering.tasks.subscription_collect")
def subscription_collect(organization_id: int) -> str | None:
    from metering.services import subscriptions

    return subscriptions.subscription_collect(organization_id=organization_id)


@shared_task(name="metering.tasks.subscription_notify", autoretry_for=(ConnectionError, TimeoutError, OSError), max_retries=5)
def subscription_notify(subscription_id: int, notice: str) -> int:
    from metering.services import subscriptions

    return subscriptions.subscription_notify(subscription_id=subscription_id, notice=notice)


def subscription_collect_enqueue(sender: object, *, organization_id: int, **kwargs: Any) -> None:
    """Receiver of the ledger's `wallet_credited_signal` (after the credit committed): queue the
    collection of a past_due subscription's fee, if the organization has one."""
    from metering.subscription_selectors import past_due_exists

    try:
        if past_due_exists(organization_id=organization_id):
            subscription_collect.delay(organization_id)
    except Exception:  # a broker outage must never fail a credit that already committed; beat collects later
        logger.exception("could not queue the subscription collection of organization %s", organization_id)
