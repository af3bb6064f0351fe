"""Migration payments 0015 gives every payment credited before receipts existed its receipt, numbered
per organization in the order the payments were credited (not the order they were started)."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from payments.models import DocumentCounter, Payment, Receipt
from tests.factories import UserFactory, organization_create
from tests.payments.payment_helpers import sandbox_notify, sandbox_payment, settled_sandbox_payment
from tests.payments.receipt_helpers import receipt_numbers

BEFORE_RECEIPTS = [("payments", "0014_alert_kinds")]


def _migrate(targets) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_backfill_numbers_credited_payments_in_settlement_order():
    acme = organization_create(name="Acme", owner=UserFactory())
    globex = organization_create(name="Globex", owner=UserFactory())
    a1, a2, a3 = (settled_sandbox_payment(acme, f"{n}.00") for n in (1, 2, 3))
    g1, g2 = (settled_sandbox_payment(globex, f"{n}.00") for n in (4, 5))
    pending = sandbox_payment(acme, "6.00")
    failed = sandbox_notify(sandbox_payment(acme, "7.00"), "payment.failed")
    leaves = MigrationExecutor(connection).loader.graph.leaf_nodes()
    try:
        _migrate(BEFORE_RECEIPTS)
        with connection.cursor() as cursor:
            assert "payments_receipt" not in connection.introspection.table_names(cursor)
        # Credited in another order than they were started (and a failed payment settled in between).
        base = datetime(2026, 3, 1, tzinfo=UTC)
        order = {a3.pk: 1, g2.pk: 2, a1.pk: 3, failed.pk: 4, g1.pk: 5, a2.pk: 6}
        for payment_id, hours in order.items():
            Payment.objects.filter(pk=payment_id).update(settled_at=base + timedelta(hours=hours))
        # two credited at the same instant: the older id first
        Payment.objects.filter(pk=a2.pk).update(settled_at=base + timedelta(hours=3))
    finally:
        _migrate(leaves)

    assert receipt_numbers(acme) == [(a3.pk, 1), (a1.pk, 2), (a2.pk, 3)]
    assert receipt_numbers(globex) == [(g2.pk, 1), (g1.pk, 2)]
    assert not Receipt.objects.filter(payment_id__in=[pending.pk, failed.pk]).exists()
    issued = dict(Receipt.objects.values_list("payment_id", "issued_at"))
    assert issued[a3.pk] == base + timedelta(hours=1)
    counters = dict(DocumentCounter.objects.filter(kind="receipt").values_list("organization_id", "last"))
    assert counters == {acme.pk: 3, globex.pk: 2}

    # and numbering goes on from there
    assert sandbox_notify(pending).status == "succeeded"
    assert receipt_numbers(acme)[-1] == (pending.pk, 4)
