from celery import shared_task

from metering import services


@shared_task(name="metering.tasks.holds_expire")
def holds_expire() -> int:
    return services.holds_expire()
