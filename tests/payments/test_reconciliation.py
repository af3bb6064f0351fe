"""Reconciliation (docs/contract.md §2.2): cash in − revenue − refunds + promotions ± adjustments equals the change
of the wallets, and every wallet's cached balance equals its ledger."""

from decimal import Decimal

import pytest
from django.utils import timezone

from payments import ledger, reconciliation, services, tasks
from tests.factories import wallet_fund
from tests.payments.helpers import wallet_of, wallet_tamper
from tests.payments.payment_helpers import settled_sandbox_payment

D = Decimal


def gauge_value() -> float:
    [metric] = reconciliation.MISMATCH_GAUGE.collect()
    [sample] = [s for s in metric.samples if s.name == "tollgate_reconciliation_mismatches"]
    return sample.value


@pytest.fixture
def busy_period(organization, other_organization, staff_user):
    """Before the period: funding that must not count. In it, for two tenants: recharges, usage,
    a refund, a code redemption, adjustments both ways, and a hold (which moves no money)."""
    wallet_fund(organization, "1000", reason="before the period")
    wallet_fund(other_organization, "7", reason="before the period")
    start = timezone.now()

    acme = settled_sandbox_payment(organization, "100.00")
    settled_sandbox_payment(other_organization, "50.00")
    ledger.usage_charge(organization_id=organization.pk, cost=D("30.000000150000"), reference="u1")
    ledger.usage_charge(organization_id=other_organization.pk, cost=D("10"), reference="u2")
    services.payment_refund(payment=acme, amount=D("20"), reason="partial refund", staff=staff_user)
    [code] = services.redemption_codes_generate(
        batch="b", amount=D("15"), count=1, max_uses=2, expires_at=None, created_by=staff_user
    )
    services.code_redeem(organization=organization, user=None, code=code)
    services.code_redeem(organization=other_organization, user=None, code=code)
    ledger.wallet_adjust(organization_id=organization.pk, amount=D("5"), reason="goodwill", created_by_id=staff_user.pk)
    ledger.wallet_adjust(organization_id=other_organization.pk, amount=D("-2"), reason="correction", created_by_id=staff_user.pk)
    ledger.wallet_hold(usage=True, organization_id=organization.pk, amount=D("3"))

    end = timezone.now()
    wallet_fund(organization, "400", reason="after the period")
    return start, end


def test_the_report_adds_up_over_a_period(busy_period, organization, other_organization):
    start, end = busy_period

    report = reconciliation.reconciliation_report(start=start, end=end)

    assert report.cash_in == D("150")
    assert report.revenue == D("40.000000150000")
    assert report.refunds == D("20")
    assert report.promotions == D("30")
    assert report.adjustments == D("3")
    assert report.expected_change == D("122.999999850000")
    assert report.wallet_change == D("122.999999850000")
    assert report.identity_holds
    assert report.wallet_mismatches == []
    assert report.ok
    # The sum of all wallet balances now: everything, inside the period or not.
    balances = wallet_of(organization).balance + wallet_of(other_organization).balance
    assert report.wallet_total == balances == D("1000") + D("7") + D("122.999999850000") + D("400")


def test_without_a_start_the_report_covers_everything_up_to_the_end(busy_period):
    _, end = busy_period

    report = reconciliation.reconciliation_report(end=end)

    assert report.adjustments == D("1010")  # 1000 + 7 before the period, + 5 − 2 in it
    assert report.wallet_change == D("1129.999999850000")
    assert report.identity_holds and report.ok


def test_an_empty_period_is_all_zero(busy_period):
    _, end = busy_period

    report = reconciliation.reconciliation_report(start=end, end=end)

    assert (report.cash_in, report.revenue, report.refunds, report.promotions, report.adjustments, report.wallet_change) == (
        0,
    ) * 6
    assert report.ok


def test_a_tampered_wallet_balance_shows_up_and_sets_the_gauge(busy_period, organization, other_organization):
    start, end = busy_period
    assert reconciliation.reconciliation_run(start=start, end=end).ok
    assert gauge_value() == 0

    wallet_tamper(organization.pk, "balance + 1")

    report = reconciliation.reconciliation_run(start=start, end=end)

    assert not report.ok
    assert report.identity_holds  # the ledger itself is intact; the cache is not
    [mismatch] = report.wallet_mismatches
    expected_entries = D("1000") + D("100") - D("30.000000150000") - D("20") + D("15") + D("5") + D("400")
    assert mismatch == {
        "organization_id": organization.pk,
        "balance": expected_entries + 1,
        "entries_total": expected_entries,
        "last_balance_after": expected_entries,
    }
    assert gauge_value() >= 1
    assert tasks.reconcile.apply().get() == {"ok": False, "mismatches": 1}

    wallet_tamper(organization.pk, "balance - 1")
    assert reconciliation.reconciliation_run(start=start, end=end).ok
    assert gauge_value() == 0


def test_a_wallet_without_entries_but_a_balance_is_a_mismatch(organization, other_organization):
    wallet_tamper(other_organization.pk, "5")

    report = reconciliation.reconciliation_run()

    assert [m["organization_id"] for m in report.wallet_mismatches] == [other_organization.pk]
    assert report.wallet_mismatches[0]["last_balance_after"] is None
    assert gauge_value() == 1


def test_staff_see_the_reconciliation_in_the_back_office(client, staff_user, busy_period, organization):
    wallet_tamper(organization.pk, "balance + 1")
    client.force_login(staff_user)

    page = client.get("/admin/reconciliation/")

    assert page.status_code == 200
    content = page.content.decode()
    assert "Mismatch" in content
    assert format(wallet_of(organization).balance.normalize(), "f") in content  # every digit that matters, no padding
