"""Celery tasks: load by id, call a service, own the retry policy."""

from celery import shared_task

from accounts import services

TRANSIENT = (ConnectionError, TimeoutError, OSError)  # smtplib's errors are OSErrors


@shared_task(name="accounts.tasks.user_signup_attempt_notify", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def user_signup_attempt_notify(user_id: int) -> None:
    services.user_signup_attempt_notify(user_id=user_id)
