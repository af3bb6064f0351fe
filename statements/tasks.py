"""Celery tasks for statements: load by id, call a service, own the retry policy."""

from celery import shared_task

from statements import services

TRANSIENT = (ConnectionError, TimeoutError, OSError)


@shared_task(name="statements.tasks.statements_issue")
def statements_issue() -> int:
    """The beat task: one issuing task per organization with a closed month not yet issued."""
    due = services.organizations_due()
    for organization_id in due:
        statements_issue_organization.delay(organization_id)
    return len(due)


@shared_task(name="statements.tasks.statements_issue_organization", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def statements_issue_organization(organization_id: int) -> int:
    return len(services.statements_issue_for_organization(organization_id=organization_id))
