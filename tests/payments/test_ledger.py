"""The ledger's invariants (docs/contract.md §2.2–2.4), enforced by code and by the database."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.tenancy import Tenant
from metering import services
from metering.models import Price, UsageRecord
from payments import ledger
from payments.models import Account, LedgerEntry, Transfer, TransferKind, Wallet
from tests.factories import organization_create, service_with_price, wallet_fund
from tests.payments.helpers import assert_money_invariants, wallet_of

D = Decimal
TINY = D("0.000000000001")


def set_credit_limit(organization, limit: str) -> None:
    Wallet.objects.filter(organization_id=organization.pk).update(credit_limit=D(limit))


def charge(organization, amount: str) -> ledger.Posting:
    return ledger.usage_charge(organization_id=organization.pk, cost=D(amount), reference="test")


def test_postings_keep_balance_equal_to_entries_and_running_balance_after(organization):
    wallet_fund(organization, "10")
    charge(organization, "0.000000150000")
    ledger.wallet_hold(usage=True, organization_id=organization.pk, amount=D("2"))
    ledger.usage_charge(organization_id=organization.pk, cost=D("3"), release_held=D("2"), reference="hold")
    ledger.wallet_credit(
        organization_id=organization.pk,
        amount=D("5.5"),
        kind=TransferKind.RECHARGE,
        counter_account=Account.PAYMENTS_CLEARING,
        reference="payment:1",
    )
    wallet_fund(organization, "-0.5")
    with transaction.atomic():
        ledger.usage_charge_batch(organization_id=organization.pk, costs=[D("1"), D("100"), D("2")], reference="batch")

    wallet = wallet_of(organization)
    assert wallet.balance == D("8.99999985")
    assert wallet.held == 0
    assert list(
        LedgerEntry.objects.filter(organization_id=organization.pk, account="wallet")
        .order_by("id")
        .values_list("balance_after", flat=True)
    ) == [D("10"), D("9.99999985"), D("6.99999985"), D("12.49999985"), D("11.99999985"), D("8.99999985")]
    assert_money_invariants([organization.pk])


@pytest.mark.parametrize("posted", ["nothing", "less"])
def test_the_invariant_check_catches_usage_not_fully_in_the_ledger(organization, posted):
    """The check the money tests rely on can fail: a costed live record with no transfer, or whose
    transfer moved less than the record cost."""
    service = service_with_price(slug="ping", unit_price="1")
    wallet_fund(organization, "5")
    transfer_id = None if posted == "nothing" else charge(organization, "0.5").transfer_id
    UsageRecord.objects.create(
        organization=organization,
        service=service,
        quantity=1,
        unit_price=D(1),
        cost=D(1),
        idempotency_key="k",
        request_hash="h",
        transfer_id=transfer_id,
    )

    with pytest.raises(AssertionError, match="usage and ledger disagree"):
        assert_money_invariants([organization.pk], holds=False)


def test_every_transfer_has_a_balancing_system_leg(organization):
    wallet_fund(organization, "3")
    charge(organization, "1.25")

    usage = Transfer.objects.get(organization_id=organization.pk, kind=TransferKind.USAGE)
    legs = sorted((e.account, e.amount) for e in usage.entries.all())
    assert legs == [("revenue", D("1.25")), ("wallet", D("-1.25"))]
    adjustment = Transfer.objects.get(organization_id=organization.pk, kind=TransferKind.ADJUSTMENT)
    assert sorted((e.account, e.amount) for e in adjustment.entries.all()) == [("adjustments", D("-3")), ("wallet", D("3"))]
    assert adjustment.memo == "test funding"


def test_zero_amount_posts_nothing(organization):
    wallet_fund(organization, "1")
    posting = charge(organization, "0")

    assert posting.transfer_id is None
    assert not Transfer.objects.filter(organization_id=organization.pk, kind=TransferKind.USAGE).exists()


@pytest.mark.parametrize(("funding", "limit"), [("0", "0"), ("-2", "2"), ("-2.5", "2")])
def test_zero_amount_debit_is_refused_at_or_below_the_limit(organization, funding, limit):
    """Nothing new starts while available ≤ −credit_limit, not even a free event (issue: zero holds)."""
    set_credit_limit(organization, limit)
    if funding != "0":  # a hold's capture of delivered usage may go past the limit (docs/contract.md §2.4)
        ledger.usage_charge(organization_id=organization.pk, cost=-D(funding), reference="over-capture", may_overdraw=True)
    with pytest.raises(ledger.InsufficientBalance):
        charge(organization, "0")
    with pytest.raises(ledger.InsufficientBalance):
        ledger.wallet_hold(usage=True, organization_id=organization.pk, amount=TINY)
    assert_money_invariants([organization.pk], holds=False)


def test_counter_account_must_be_a_system_account(organization):
    with pytest.raises(ValueError, match="system account"):
        ledger.transfer_post(
            organization_id=organization.pk, kind=TransferKind.ADJUSTMENT, amount=D(1), counter_account=Account.WALLET
        )


@pytest.mark.parametrize("reason", ["", "   "])
def test_adjustment_requires_a_reason(organization, reason):
    with pytest.raises(ValueError, match="reason"):
        ledger.wallet_adjust(organization_id=organization.pk, amount=D(1), reason=reason, created_by_id=None)
    assert wallet_of(organization).balance == 0


def test_credit_must_be_positive(organization):
    with pytest.raises(ValueError):
        ledger.wallet_credit(
            organization_id=organization.pk,
            amount=D("-1"),
            kind=TransferKind.RECHARGE,
            counter_account=Account.PAYMENTS_CLEARING,
            reference="x",
        )


@pytest.mark.django_db(transaction=True)
def test_batch_charges_must_run_in_a_transaction(organization):
    with pytest.raises(RuntimeError):
        ledger.usage_charge_batch(organization_id=organization.pk, costs=[D(1)], reference="x")


# --- §2.4: a debit never takes balance − held below −credit_limit --------------------------------


@pytest.mark.parametrize(("credit_limit", "funding"), [("0", "1"), ("5", "1"), ("5", "0"), ("0.000000000001", "0")])
def test_debit_may_reach_the_limit_but_not_pass_it(organization, credit_limit, funding):
    set_credit_limit(organization, credit_limit)
    if D(funding):
        wallet_fund(organization, funding)
    reachable = D(funding) + D(credit_limit)

    charge(organization, str(reachable))
    with pytest.raises(ledger.InsufficientBalance):
        charge(organization, str(TINY))

    wallet = wallet_of(organization)
    assert wallet.balance == -D(credit_limit)
    assert Transfer.objects.filter(organization_id=organization.pk, kind=TransferKind.USAGE).count() == 1
    assert_money_invariants([organization.pk])


@pytest.mark.parametrize("credit_limit", ["0", "2"])
def test_debit_counts_active_holds(organization, credit_limit):
    set_credit_limit(organization, credit_limit)
    wallet_fund(organization, "10")
    ledger.wallet_hold(usage=True, organization_id=organization.pk, amount=D("4"))

    with pytest.raises(ledger.InsufficientBalance):
        charge(organization, str(D("6") + D(credit_limit) + TINY))
    charge(organization, str(D("6") + D(credit_limit)))

    wallet = wallet_of(organization)
    assert wallet.available == -D(credit_limit)
    with pytest.raises(ledger.InsufficientBalance):
        ledger.wallet_hold(usage=True, organization_id=organization.pk, amount=TINY)
    assert wallet_of(organization).held == D("4")


def test_overdraft_refusal_writes_nothing(organization):
    wallet_fund(organization, "1")
    entries_before = LedgerEntry.objects.count()

    with pytest.raises(ledger.InsufficientBalance):
        charge(organization, "1.000000000001")

    assert LedgerEntry.objects.count() == entries_before
    assert wallet_of(organization).balance == D("1")


def test_negative_adjustment_may_not_pass_the_limit(organization):
    set_credit_limit(organization, "3")
    wallet_fund(organization, "1")

    with pytest.raises(ledger.InsufficientBalance):
        wallet_fund(organization, "-4.000000000001")
    wallet_fund(organization, "-4")

    assert wallet_of(organization).balance == D("-3")


def test_overdrawn_capture_may_pass_the_limit_and_credits_still_land(organization):
    """docs/contract.md §2.4's one exception: usage already delivered is recorded in full."""
    set_credit_limit(organization, "1")
    wallet_fund(organization, "2")
    ledger.wallet_hold(usage=True, organization_id=organization.pk, amount=D("2"))

    ledger.usage_charge(organization_id=organization.pk, cost=D("5"), release_held=D("2"), may_overdraw=True)
    assert wallet_of(organization).balance == D("-3")
    with pytest.raises(ledger.InsufficientBalance):
        charge(organization, str(TINY))
    with pytest.raises(ledger.InsufficientBalance):
        ledger.wallet_hold(usage=True, organization_id=organization.pk, amount=TINY)

    wallet_fund(organization, "1")  # a credit short of the limit still lands
    assert wallet_of(organization).balance == D("-2")
    assert_money_invariants([organization.pk], holds=False)


def test_batch_skips_what_does_not_fit_and_keeps_running_balances(organization):
    set_credit_limit(organization, "1")
    wallet_fund(organization, "2")
    ledger.wallet_hold(usage=True, organization_id=organization.pk, amount=D("0.5"))

    with transaction.atomic():
        postings = ledger.usage_charge_batch(
            organization_id=organization.pk,
            costs=[D("1"), D("2"), D("0"), D("1.5"), D("0.000000000001")],
            reference="batch",
        )

    refused = ledger.Refusal.BALANCE
    assert [p if isinstance(p, ledger.Refusal) else p.balance_after for p in postings] == [
        D("1"),
        refused,
        D("1"),
        D("-0.5"),
        refused,
    ]
    assert postings[2].transfer_id is None
    # What was charged is one usage transfer: its legs are the sum, its events share its id.
    [transfer] = Transfer.objects.filter(organization_id=organization.pk, kind="usage")
    assert postings[0].transfer_id == postings[3].transfer_id == transfer.pk
    assert sorted(transfer.entries.values_list("account", "amount", "balance_after")) == [
        ("revenue", D("2.5"), None),
        ("wallet", D("-2.5"), D("-0.5")),
    ]
    assert wallet_of(organization).balance == D("-0.5")
    assert_money_invariants([organization.pk], holds=False)


def test_batch_budget_caps_the_total_charged_in_order(organization):
    wallet_fund(organization, "10")
    with transaction.atomic():
        postings = ledger.usage_charge_batch(
            organization_id=organization.pk, costs=[D("1"), D("2"), D("0.5")], reference="batch", budget=D("1.5")
        )
    assert [p if isinstance(p, ledger.Refusal) else p.balance_after for p in postings] == [
        D("9"),
        ledger.Refusal.BUDGET,
        D("8.5"),
    ]
    assert_money_invariants([organization.pk], holds=False)


# --- §2.3: the database refuses changes to money records ------------------------------------------


@pytest.fixture
def recorded_usage(organization, owner):
    """One usage record with its transfer and entries, written by the real service."""
    service_with_price(slug="ping", unit_price="0.25")
    wallet_fund(organization, "1")
    tenant = Tenant(organization=organization, user=owner, api_key=None, role=None)
    return services.usage_record(tenant=tenant, event=services.UsageEvent(service="ping", idempotency_key="k", data={})).record


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE payments_ledgerentry SET amount = amount * 2",
        "UPDATE payments_ledgerentry SET balance_after = 1000 WHERE account = 'wallet'",
        "DELETE FROM payments_ledgerentry",
        "UPDATE payments_transfer SET memo = 'edited'",
        "DELETE FROM payments_transfer",
        "UPDATE metering_usagerecord SET cost = 0",
        "UPDATE metering_usagerecord SET test = true",
        "DELETE FROM metering_usagerecord",
    ],
)
def test_database_refuses_updates_and_deletes_of_money_records(recorded_usage, sql):
    before = snapshot()

    with pytest.raises(IntegrityError, match="immutable"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)

    assert snapshot() == before


def test_orm_cannot_change_money_records_either(recorded_usage):
    before = snapshot()
    attempts = [
        lambda: LedgerEntry.objects.update(amount=1),
        lambda: LedgerEntry.objects.all().delete(),
        lambda: UsageRecord.objects.filter(pk=recorded_usage.pk).update(cost=0),
        lambda: UsageRecord.objects.filter(pk=recorded_usage.pk).delete(),
        lambda: Transfer.objects.update(memo="edited"),
    ]
    for attempt in attempts:
        with pytest.raises(IntegrityError), transaction.atomic():
            attempt()

    assert snapshot() == before


def snapshot():
    return (
        list(LedgerEntry.objects.order_by("id").values_list("id", "amount", "balance_after")),
        list(Transfer.objects.order_by("id").values_list("id", "memo", "kind")),
        list(UsageRecord.objects.order_by("id").values_list("id", "cost", "test")),
    )


def _insert_transfer_with(organization, entries: list[tuple[str, str]]) -> None:
    """A raw transfer and its entries (account, amount), all in one INSERT like the ledger does."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO payments_transfer (organization_id, kind, reference, memo, created_at) "
            "VALUES (%s, 'adjustment', 'raw', '', %s) RETURNING id",
            [organization.pk, now],
        )
        transfer_id = cursor.fetchone()[0]
        values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(entries))
        params = []
        for account, amount in entries:
            params += [transfer_id, organization.pk, account, D(amount), D(amount) if account == "wallet" else None, now]
        cursor.execute(
            "INSERT INTO payments_ledgerentry (transfer_id, organization_id, account, amount, balance_after, created_at) "
            f"VALUES {values}",
            params,
        )


@pytest.mark.parametrize(
    "entries",
    [
        [("wallet", "5"), ("adjustments", "-4")],
        [("wallet", "5")],
        [("adjustments", "-5")],
        [("wallet", "5"), ("adjustments", "-5"), ("revenue", "0.000000000001")],
    ],
)
def test_database_refuses_unbalanced_transfers(organization, entries):
    with pytest.raises(IntegrityError, match="unbalanced"), transaction.atomic():
        _insert_transfer_with(organization, entries)

    assert not LedgerEntry.objects.filter(organization_id=organization.pk).exists()


def test_database_accepts_a_balanced_raw_transfer(organization):
    """The control for the test above: the trigger refuses unbalanced transfers, not every insert."""
    _insert_transfer_with(organization, [("wallet", "5"), ("adjustments", "-2"), ("promotions", "-3")])

    assert LedgerEntry.objects.filter(organization_id=organization.pk).count() == 3


def test_database_refuses_price_updates_and_deletes_in_force(db):
    service = service_with_price(slug="ping", unit_price="0.25")
    price = Price.objects.get(service=service)

    for sql in ("UPDATE metering_price SET unit_price = 0", "DELETE FROM metering_price"):
        with pytest.raises(IntegrityError, match="never edited"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    with pytest.raises(IntegrityError), transaction.atomic():
        Price.objects.filter(pk=price.pk).update(unit_price=D("0.01"))

    price.refresh_from_db()
    assert price.unit_price == D("0.25")


def test_a_future_price_may_be_withdrawn_before_it_takes_effect(db):
    service = service_with_price(slug="ping", unit_price="0.25")
    future = Price.objects.create(service=service, effective_from=timezone.now() + timedelta(days=1), unit_price=D(1))

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM metering_price WHERE id = %s", [future.pk])

    assert list(Price.objects.filter(service=service).values_list("unit_price", flat=True)) == [D("0.25")]


def test_wallets_of_other_organizations_are_untouched(organization):
    other = organization_create(name="Other")
    wallet_fund(other, "7")
    wallet_fund(organization, "1")
    charge(organization, "0.4")

    assert wallet_of(other).balance == D("7")
    assert_money_invariants()
