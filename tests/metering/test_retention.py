"""Retention drops old usage records only after archiving them, only through the trigger's
maintenance path, never touching the ledger or the rollups that summaries read."""

import gzip
import json
from datetime import UTC, datetime
from decimal import Decimal
from unittest import mock

import pytest
from django.db import IntegrityError, connection, transaction

from accounts.tenancy import Tenant
from metering import services
from metering.models import UsageRecord, UsageRollup
from metering.retention import usage_retention_run
from payments import ledger
from payments.models import LedgerEntry
from tests.factories import service_with_price

OLD = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
NOW = datetime(2026, 6, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
def usage(organization, live_key):
    service_with_price(slug="ping", calc_method="REQUEST", unit_price="0.01")
    ledger.wallet_adjust(organization_id=organization.pk, amount=Decimal(10), reason="t", created_by_id=None)
    tenant = Tenant(organization=organization, user=None, api_key=live_key.api_key, role=None)
    for index, when in enumerate([OLD, OLD, NOW]):
        with mock.patch("metering.services.usage.timezone.now", return_value=when):
            services.usage_record(tenant=tenant, event=services.UsageEvent(service="ping", idempotency_key=f"k{index}", data={}))
    return tenant


def test_retention_archives_then_drops_only_old_records(usage, tmp_path):
    entries_before = LedgerEntry.objects.count()
    rollups_before = list(UsageRollup.objects.order_by("day").values_list("day", "events", "cost"))
    old_ids = sorted(UsageRecord.objects.filter(created_at__lt=datetime(2026, 2, 1, tzinfo=UTC)).values_list("id", flat=True))

    result = usage_retention_run(older_than_days=30, archive_dir=tmp_path, now=NOW)

    assert (result.exported, result.deleted) == (2, 2)
    with gzip.open(result.archive, "rt") as archive:
        rows = [json.loads(line) for line in archive]
    assert sorted(row["id"] for row in rows) == old_ids
    assert rows[0]["cost"] == "0.010000000000"
    assert list(UsageRecord.objects.values_list("idempotency_key", flat=True)) == ["k2"]
    assert LedgerEntry.objects.count() == entries_before
    assert list(UsageRollup.objects.order_by("day").values_list("day", "events", "cost")) == rollups_before


def test_nothing_old_means_no_archive(usage, tmp_path):
    result = usage_retention_run(older_than_days=400, archive_dir=tmp_path, now=NOW)
    assert (result.archive, result.deleted) == (None, 0)
    assert UsageRecord.objects.count() == 3


def _delete(sql_cutoff: str | None) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        if sql_cutoff:
            cursor.execute("SELECT set_config('tollgate.retention_cutoff', %s, true)", [sql_cutoff])
        cursor.execute("DELETE FROM metering_usagerecord")


@pytest.mark.parametrize("cutoff", [None, "2025-01-01T00:00:00+00:00", "2030-01-01T00:00:00+00:00"])
def test_trigger_refuses_deletes_outside_the_maintenance_path(usage, cutoff):
    # No cutoff: refused. A cutoff before the records: too young, refused. A cutoff after them all
    # passes the age rule, so drop the newest record's rollup to prove the rollup rule refuses it.
    if cutoff and cutoff.startswith("2030"):
        UsageRollup.objects.filter(day=NOW.date()).delete()
    with pytest.raises(IntegrityError):
        _delete(cutoff)
    assert UsageRecord.objects.count() == 3


def test_update_is_refused_even_on_the_maintenance_path(usage):
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('tollgate.retention_cutoff', '2030-01-01T00:00:00+00:00', true)")
        cursor.execute("UPDATE metering_usagerecord SET cost = 0")
