"""The back office: staff groups, read-only history, adjustments only through the ledger."""

import importlib
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from metering.models import Price
from payments.models import LedgerEntry, Transfer, Wallet
from tests.factories import UserFactory, service_with_price


@pytest.fixture(autouse=True)
def _staff_groups(db):
    """The groups come from a data migration; transactional tests elsewhere truncate them, so
    re-run that migration's function (it is idempotent)."""
    from django.apps import apps

    importlib.import_module("metering.migrations.0003_staff_groups").create_groups(apps, None)


def staff_client(group: str | None = None, *, superuser: bool = False) -> tuple[Client, object]:
    user = UserFactory(is_staff=True, is_superuser=superuser)
    if group:
        user.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(user)
    return client, user


@pytest.mark.parametrize(
    "url",
    [
        "/admin/",
        "/admin/accounts/organization/",
        "/admin/payments/ledgerentry/",
        "/admin/metering/usagerecord/",
        "/admin/metering/service/",
    ],
)
def test_support_can_look(db, organization, url):
    client, _ = staff_client("Support")
    assert client.get(url).status_code == 200


def test_support_cannot_adjust_or_change_prices(db, organization):
    client, _ = staff_client("Support")
    response = client.post(
        "/admin/accounts/organization/",
        {"action": "adjust_balance", "_selected_action": [organization.pk], "apply": "1", "amount": "5", "reason": "nope"},
    )
    assert response.status_code in (200, 302, 403)
    assert not Transfer.objects.exists()
    assert client.get("/admin/metering/price/add/").status_code == 403


def test_billing_admin_adjustment_writes_a_ledger_transfer_with_reason(db, organization):
    client, user = staff_client("Billing admins")
    form = client.post("/admin/accounts/organization/", {"action": "adjust_balance", "_selected_action": [organization.pk]})
    assert form.status_code == 200 and b"reason" in form.content
    response = client.post(
        "/admin/accounts/organization/",
        {"action": "adjust_balance", "_selected_action": [organization.pk], "apply": "1", "amount": "12.5", "reason": "goodwill"},
    )
    assert response.status_code == 302
    transfer = Transfer.objects.get()
    assert (transfer.kind, transfer.memo, transfer.created_by) == ("adjustment", "goodwill", user)
    assert Wallet.objects.get(organization=organization).balance == Decimal("12.5")
    assert sorted(LedgerEntry.objects.values_list("account", flat=True)) == ["adjustments", "wallet"]


def test_adjustment_without_reason_changes_nothing(db, organization):
    client, _ = staff_client("Billing admins")
    client.post(
        "/admin/accounts/organization/",
        {"action": "adjust_balance", "_selected_action": [organization.pk], "apply": "1", "amount": "12.5", "reason": ""},
    )
    assert not Transfer.objects.exists()


def test_ledger_and_usage_are_read_only_in_admin(db, organization):
    client, _ = staff_client(superuser=True)
    for url in ["/admin/payments/ledgerentry/add/", "/admin/metering/usagerecord/add/", "/admin/payments/transfer/add/"]:
        assert client.get(url).status_code == 403


def test_price_history_is_new_rows_only(db):
    service = service_with_price(slug="tts", calc_method="CHAR_COUNT", unit_price="0.015")
    client, user = staff_client("Billing admins")
    old = Price.objects.get()
    assert client.post(f"/admin/metering/price/{old.pk}/change/", {"unit_price": "1"}).status_code == 403
    response = client.post(
        "/admin/metering/price/add/",
        {"service": service.pk, "effective_from_0": "2030-01-01", "effective_from_1": "00:00:00", "unit_price": "0.020"},
    )
    assert response.status_code == 302, response.content[:2000]
    assert Price.objects.count() == 2
    assert Price.objects.get(pk=old.pk).unit_price == Decimal("0.015")
    assert Price.objects.exclude(pk=old.pk).get().created_by == user
