"""Document numbers under concurrency (docs/statements.md): statements issued by many issuers at once, the beat
task run twice and at once, receipts of payments settled at once — numbers 1..N per organization,
in order, without gaps or repeats, and a rolled-back insert leaves no gap. Real threads, real
transactions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Organization
from payments.models import DocumentCounter, DocumentKind, Payment, Receipt, TransferKind
from statements import tasks
from statements.models import Statement
from statements.services import month_after, month_start, statement_issue_next, statements_issue_for_organization
from tests.concurrency import run_concurrently
from tests.factories import organization_create, wallet_fund
from tests.payments.payment_helpers import sandbox_notify, sandbox_payment

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    pass


def created_months_ago(months: int, name: str) -> Organization:
    organization = organization_create(name=name)
    start = month_start(timezone.now())
    for _ in range(months):
        start = month_start(start - timedelta(days=1))
    Organization.objects.filter(pk=organization.pk).update(created_at=start + timedelta(days=9, hours=5))
    return organization


def closed_months(organization_id: int, now: datetime) -> list[datetime]:
    """The months from the organization's creation that ended at least the issue delay before `now`."""
    created = Organization.objects.values_list("created_at", flat=True).get(pk=organization_id)
    months, start = [], month_start(created)
    while month_after(start) + timedelta(hours=1) <= now:
        months.append(start)
        start = month_after(start)
    return months


def assert_numbered(organization_id: int, months: list[datetime]) -> None:
    issued = list(
        Statement.objects.filter(organization_id=organization_id).order_by("number").values_list("number", "period_start")
    )
    assert issued == list(enumerate(months, start=1))
    assert DocumentCounter.objects.get(organization_id=organization_id, kind=DocumentKind.STATEMENT).last == len(months)


def test_sixteen_issuers_of_one_organization_issue_each_month_once_in_order():
    organization = created_months_ago(14, "Acme")
    wallet_fund(organization, "5")
    now = timezone.now()

    results = run_concurrently(
        16, lambda _: statements_issue_for_organization(organization_id=organization.pk, now=now), reraise=True
    )

    months = closed_months(organization.pk, now)
    assert len(months) == 14
    assert sorted(s.number for issued in results for s in issued) == list(range(1, 15))  # each issued by exactly one thread
    assert_numbered(organization.pk, months)


def test_issuers_of_several_organizations_number_each_independently():
    organizations = [created_months_ago(months, f"org-{months}") for months in (3, 7, 12, 1)]
    now = timezone.now()

    run_concurrently(
        16,
        lambda i: statements_issue_for_organization(organization_id=organizations[i % 4].pk, now=now),
        reraise=True,
    )

    for organization in organizations:
        assert_numbered(organization.pk, closed_months(organization.pk, now))


def test_the_beat_task_run_twice_at_once_and_again_issues_each_statement_once(settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the fanned-out tasks run in the calling thread
    organizations = [created_months_ago(months, f"org-{months}") for months in (2, 5, 9)]

    due = run_concurrently(2, lambda _: tasks.statements_issue(), reraise=True)
    assert tasks.statements_issue() == 0  # nothing due any more
    assert sum(due) >= len(organizations)

    for organization in organizations:
        assert_numbered(organization.pk, closed_months(organization.pk, timezone.now()))


def test_a_rolled_back_statement_gives_its_number_back():
    organization = created_months_ago(3, "Acme")
    first = statement_issue_next(organization_id=organization.pk)
    assert first is not None and first.number == 1
    with pytest.raises(Rollback), transaction.atomic():
        twin = Statement.objects.create(
            organization=organization,
            period_start=datetime(2001, 1, 1, tzinfo=UTC),
            period_end=datetime(2001, 2, 1, tzinfo=UTC),
            currency="USD",
            opening_balance=0,
            closing_balance=0,
        )
        twin.refresh_from_db()
        assert twin.number == 2
        raise Rollback
    second = statement_issue_next(organization_id=organization.pk)
    assert second is not None and second.number == 2
    assert second.period_start == first.period_end


def test_a_rolled_back_receipt_gives_its_number_back():
    organization = organization_create(name="Acme")
    payments = [sandbox_payment(organization, "5.00") for _ in range(2)]
    with pytest.raises(Rollback), transaction.atomic():
        Receipt.objects.create(organization=organization, payment=payments[0])
        raise Rollback
    for payment in payments:
        sandbox_notify(payment)
    assert list(Receipt.objects.filter(organization=organization).order_by("number").values_list("payment_id", "number")) == [
        (payments[0].pk, 1),
        (payments[1].pk, 2),
    ]


def test_receipts_of_payments_settled_at_once_are_numbered_in_settlement_order():
    organization = organization_create(name="Acme")
    other = organization_create(name="Globex")
    payments = [sandbox_payment(organization, f"{n + 1}.00") for n in range(12)]
    others = [sandbox_payment(other, "3.00") for _ in range(4)]
    everyone = payments + others

    run_concurrently(len(everyone), lambda i: sandbox_notify(everyone[i]), reraise=True)

    for org, mine in ((organization, payments), (other, others)):
        rows = list(
            Payment.objects.filter(organization=org)
            .order_by("receipt__number")
            .values_list("receipt__number", "transfer_id", "status")
        )
        assert [number for number, _, _ in rows] == list(range(1, len(mine) + 1))
        assert {status for _, _, status in rows} == {"succeeded"}
        # numbered with the credit, under the wallet's lock: in the order the credits were posted
        transfers = [transfer_id for _, transfer_id, _ in rows]
        assert transfers == sorted(transfers)
        assert all(
            kind == TransferKind.RECHARGE
            for kind in Payment.objects.filter(organization=org).values_list("transfer__kind", flat=True)
        )
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM payments_receipt GROUP BY organization_id, number HAVING count(*) > 1")
        assert cursor.fetchall() == []
