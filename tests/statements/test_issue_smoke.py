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


def test_settlement_numbers_receipts(organization, api_client, eager_celery, django_capture_on_commit_callbacks):
    from tests.payments.payment_helpers import post_sandbox, sandbox_body, sandbox_payment

    payments = [sandbox_payment(organization, "5.00") for _ in range(3)]
    for payment in payments:
        with django_capture_on_commit_callbacks(execute=True):
            assert post_sandbox(api_client, sandbox_body(payment)).status_code == 200
    numbers = list(Receipt.objects.filter(organization=organization).order_by("number").values_list("payment_id", "number"))
    assert numbers == [(p.pk, n) for n, p in enumerate(payments, start=1)]
