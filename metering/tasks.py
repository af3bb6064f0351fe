from typing import Any

from celery import shared_task

from metering import services


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
