"""Celery tasks for statements: load by id, call a service, own the retry policy."""

import logging

from celery import shared_task
from django.utils import timezone

from statements import emails, selectors, services

logger = logging.getLogger(__name__)
TRANSIENT = (ConnectionError, TimeoutError, OSError)


@shared_task(name="statements.tasks.statements_issue")
def statements_issue() -> int:
    """The beat task: one issuing task per organization with a closed month not yet issued, and the
    email again of any statement whose email task was lost (selectors.statements_unemailed)."""
    due = services.organizations_due()
    for organization_id in due:
        statements_issue_organization.delay(organization_id)
    for statement_id in selectors.statements_unemailed(now=timezone.now()):
        statement_email.delay(statement_id)
    return len(due)


@shared_task(name="statements.tasks.statements_issue_organization", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def statements_issue_organization(organization_id: int) -> int:
    return len(services.statements_issue_for_organization(organization_id=organization_id))


@shared_task(
    name="statements.tasks.statement_email",
    autoretry_for=TRANSIENT,  # smtplib's errors are OSErrors
    retry_backoff=True,
    max_retries=8,
)
def statement_email(statement_id: int) -> bool:
    """Email an issued statement to its organization's owners, once however often it runs."""
    return emails.statement_email_send(statement_id=statement_id)


def statement_email_enqueue(sender: object, *, statement_id: int, **kwargs: object) -> None:
    """statement_issued_signal's receiver (it is sent after the statement's commit). A broker that cannot
    take the task must not fail the issuing run, whose statement is committed already: the beat task's
    sweep (selectors.statements_unemailed) queues the email again."""
    try:
        statement_email.delay(statement_id)
    except Exception:
        logger.exception("could not queue the email of statement %s; the statements beat queues it again", statement_id)
