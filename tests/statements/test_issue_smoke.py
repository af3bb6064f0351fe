"""The statement's core, once against hand figures: issued for a closed month, numbered 1, 2, 3…,
once; receipts numbered by the database as payments are credited."""

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction

from accounts.models import Organization
from payments.models import Receipt
from statements.models import Statement
from statements.services import statement_issue_next, statements_issue_for_organization
from tests.factories import wallet_fund

pytestmark = pytest.mark.django_db


def test_a_month_is_issued_once_and_equals_its_ledger(organization):
    start = datetime(2026, 9, 1, tzinfo=UTC)
    Organization.objects.filter(pk=organization.pk).update(created_at=start + timedelta(days=3))
    wallet_fund(organization, "10.000000000001")
    now = datetime.now(UTC)
    issued = statements_issue_for_organization(organization_id=organization.pk, now=now)
    months = [s.period_start for s in issued]
    assert months[0] == start
    assert [s.number for s in issued] == list(range(1, len(issued) + 1))
    assert all(b.period_start == a.period_end for a, b in itertools.pairwise(issued))
    current = issued[-1]
    assert current.period_end + timedelta(hours=1) <= now
    assert statement_issue_next(organization_id=organization.pk, now=now) is None
    # the funding happened now, in the still-open month: no closed statement carries it
    assert all(s.opening_balance == s.closing_balance == Decimal(0) for s in issued)
    assert Statement.objects.filter(organization=organization).count() == len(issued)


def test_a_statement_refuses_any_change(organization):
    Organization.objects.filter(pk=organization.pk).update(created_at=datetime(2026, 1, 5, tzinfo=UTC))
    statement = statement_issue_next(organization_id=organization.pk)
    assert statement is not None
    with pytest.raises(IntegrityError), transaction.atomic():
        Statement.objects.filter(pk=statement.pk).update(closing_balance=Decimal(5))
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE payments_documentcounter SET last = last + 5")
    Statement.objects.filter(pk=statement.pk).update(emailed_at=datetime.now(UTC))
    # emailed once: it can be neither cleared (a second email) nor moved
    for again in (None, datetime.now(UTC) + timedelta(days=1)):
        with pytest.raises(IntegrityError), transaction.atomic():
            Statement.objects.filter(pk=statement.pk).update(emailed_at=again)


def test_settlement_numbers_receipts(organization, api_client, eager_celery, django_capture_on_commit_callbacks):
    from tests.payments.payment_helpers import post_sandbox, sandbox_body, sandbox_payment

    payments = [sandbox_payment(organization, "5.00") for _ in range(3)]
    for payment in payments:
        with django_capture_on_commit_callbacks(execute=True):
            assert post_sandbox(api_client, sandbox_body(payment)).status_code == 200
    numbers = list(Receipt.objects.filter(organization=organization).order_by("number").values_list("payment_id", "number"))
    assert numbers == [(p.pk, n) for n, p in enumerate(payments, start=1)]


def test_an_entry_dated_in_an_issued_month_that_commits_late_breaks_the_chain_loudly(organization, caplog):
    """The issue delay makes this impossible for real transactions; if it happens (a delay set too
    short), the next statement still equals the ledger and the break is logged and counted."""
    from billing_site import metrics
    from payments import ledger
    from payments.models import Account, TransferKind

    Organization.objects.filter(pk=organization.pk).update(created_at=datetime(2026, 3, 2, tzinfo=UTC))
    march = statement_issue_next(organization_id=organization.pk, now=datetime(2026, 4, 1, 2, tzinfo=UTC))
    assert march is not None and march.closing_balance == 0
    ledger.transfer_post(
        organization_id=organization.pk,
        kind=TransferKind.ADJUSTMENT,
        amount=Decimal("3.5"),
        counter_account=Account.ADJUSTMENTS,
        memo="late",
        now=datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC),
    )
    breaks = metrics.STATEMENT_CHAIN_BREAKS._value.get()
    april = statement_issue_next(organization_id=organization.pk, now=datetime(2026, 5, 1, 2, tzinfo=UTC))
    assert april is not None
    assert (april.opening_balance, april.closing_balance, april.lines.count()) == (Decimal("3.5"), Decimal("3.5"), 0)
    assert metrics.STATEMENT_CHAIN_BREAKS._value.get() == breaks + 1
    assert "statement chain broken" in caplog.text


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE payments_documentcounter SET last = last + 1",
        "UPDATE payments_documentcounter SET last = last - 1",
        "DELETE FROM payments_documentcounter",
        "INSERT INTO payments_documentcounter (organization_id, kind, last) VALUES (%(org)s, 'receipt', 1)",
        "INSERT INTO payments_documentcounter (organization_id, kind, last) VALUES (%(org)s, 'receipt', 41)",
    ],
)
def test_only_an_inserted_document_moves_its_counter(organization, sql):
    Organization.objects.filter(pk=organization.pk).update(created_at=datetime(2026, 1, 5, tzinfo=UTC))
    assert statement_issue_next(organization_id=organization.pk) is not None
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, {"org": organization.pk})
    second = statement_issue_next(organization_id=organization.pk)
    assert second is not None and second.number == 2
