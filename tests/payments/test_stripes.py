"""High-volume wallets (docs/contract.md §2.9): the balance kept in stripes, each debit on one stripe's
row, with no overdraft, the same totals in every report, and striping turned on and off with the money
moved exactly. The real-thread races are in test_stripes_concurrency.py; the random model in test_wallet_model.py."""

from datetime import date
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from accounts import services as account_services
from accounts.models import ApiKey, ApiKeyStripeSpend, Role
from accounts.tenancy import Tenant
from billing_site.errors import InvalidRequest
from metering import selectors, services
from metering import selectors as metering_selectors
from metering.models import CalcMethod, UsageRecord, UsageRollup
from payments import ledger
from payments.models import LedgerEntry, Transfer, TransferKind, WalletStripe
from payments.reconciliation import reconciliation_report
from payments.services import wallet_settings_update
from tests.conftest import jwt_client
from tests.factories import UserFactory, organization_create, service_with_price, wallet_fund
from tests.payments.helpers import assert_money_invariants, money_state, wallet_of, wallet_row_balance

pytestmark = pytest.mark.django_db

D = Decimal


@pytest.fixture
def striped():
    """An organization funded with $1.00 whose wallet then gets 4 stripes; a per-million-tokens service."""
    owner = UserFactory()
    organization = organization_create(name="Hot", owner=owner)
    service_with_price(slug="gpt", calc_method=CalcMethod.TOKENS, input_price="1", output_price="1")
    wallet_fund(organization, "1")
    stripes_set(organization, 4)
    return {
        "organization": organization,
        "owner": owner,
        "tenant": Tenant(organization=organization, user=owner, api_key=None, role=Role.OWNER),
    }


def stripes_set(organization, stripes: int) -> None:
    wallet_settings_update(organization_id=organization.pk, stripes=stripes)
    organization.refresh_from_db()  # the hot path's copy, as the next authenticated request loads it


def row_balances(organization) -> dict:
    """The wallet row's own balance (None) and each stripe's."""
    return {None: wallet_row_balance(organization.pk)} | dict(
        WalletStripe.objects.filter(organization_id=organization.pk).values_list("stripe", "balance")
    )


def spend(tenant: Tenant, key: str, cost: str):
    """Debit `cost` dollars as usage (1 token = $0.000001)."""
    tokens = int(D(cost) * 1_000_000)
    return services.usage_record(
        tenant=tenant,
        event=services.UsageEvent(service="gpt", idempotency_key=key, data={"input_tokens": tokens, "output_tokens": 0}),
    )


def test_turning_stripes_on_spreads_the_money_and_off_gathers_it_exactly(striped):
    organization = striped["organization"]

    assert row_balances(organization) == {None: D("0.2"), 1: D("0.2"), 2: D("0.2"), 3: D("0.2"), 4: D("0.2")}
    assert (wallet_of(organization).balance, wallet_of(organization).stripes, organization.wallet_stripes) == (D(1), 4, 4)
    move = Transfer.objects.get(organization_id=organization.pk, kind=TransferKind.REBALANCE)
    legs = dict(move.entries.values_list("stripe", "amount"))
    assert legs == {None: D("-0.8"), 1: D("0.2"), 2: D("0.2"), 3: D("0.2"), 4: D("0.2")}
    assert_money_invariants([organization.pk])

    stripes_set(organization, 2)  # fewer stripes: all back to the wallet row, the extra rows dropped, spread again
    assert row_balances(organization) == {None: D("1") - 2 * D("0.333333333333"), 1: D("0.333333333333"), 2: D("0.333333333333")}
    assert_money_invariants([organization.pk])

    stripes_set(organization, 0)
    assert row_balances(organization) == {None: D(1)}
    assert (wallet_of(organization).balance, organization.wallet_stripes) == (D(1), 0)
    assert_money_invariants([organization.pk])
    assert reconciliation_report().ok


def test_a_striped_debit_is_one_statement_on_one_stripe(striped):
    organization = striped["organization"]

    with CaptureQueriesContext(connection) as queries:
        outcome = spend(striped["tenant"], "one", "0.01")

    money = [q["sql"] for q in queries.captured_queries if "payments_wallet" in q["sql"]]
    assert len(money) == 1 and "UPDATE payments_walletstripe" in money[0] and "FOR UPDATE" not in money[0]
    entry = LedgerEntry.objects.get(transfer_id=outcome.record.transfer_id, account="wallet")
    assert entry.stripe in {1, 2, 3, 4}
    assert list(UsageRollup.objects.filter(organization_id=organization.pk).values_list("stripe", "events")) == [
        (entry.stripe, 1)
    ]
    assert entry.balance_after == D("0.19")  # the stripe's own running balance
    assert outcome.record.balance_after == D("0.99")  # the organization's, as the customer sees it
    assert wallet_of(organization).balance == D("0.99")
    assert_money_invariants([organization.pk])


def test_a_debit_no_single_stripe_can_pay_succeeds_by_rebalancing(striped):
    organization = striped["organization"]

    outcome = spend(striped["tenant"], "big", "0.9")  # every row holds 0.2

    assert not outcome.replayed and outcome.record.cost == D("0.9")
    assert wallet_of(organization).balance == D("0.1")
    assert sum(row_balances(organization).values()) == D("0.1")
    assert Transfer.objects.filter(organization_id=organization.pk, kind=TransferKind.REBALANCE).count() == 2
    assert_money_invariants([organization.pk])


@pytest.mark.parametrize("credit_limit", ["0", "0.5"])
def test_a_debit_is_refused_only_when_the_whole_wallet_cannot_pay(striped, credit_limit):
    organization = striped["organization"]
    wallet_settings_update(organization_id=organization.pk, credit_limit=D(credit_limit))
    whole = D(1) + D(credit_limit)
    before = money_state(organization)
    rows = row_balances(organization)

    with pytest.raises(ledger.InsufficientBalance):
        spend(striped["tenant"], "too-much", str(whole + D("0.000001")))

    assert money_state(organization) == before and row_balances(organization) == rows
    spend(striped["tenant"], "all", str(whole))  # exactly what the whole wallet can pay
    assert wallet_of(organization).balance == -D(credit_limit)
    with pytest.raises(ledger.InsufficientBalance):
        spend(striped["tenant"], "after", "0.000001")
    assert_money_invariants([organization.pk])


def test_holds_and_an_over_capture_on_a_striped_wallet_start_nothing_past_the_limit(striped):
    organization, tenant = striped["organization"], striped["tenant"]
    hold = services.hold_create(
        tenant=tenant, service="gpt", idempotency_key="h", amount=D("0.9"), maxima={}, expires_in=None
    ).hold  # more than the wallet row's 0.2: the stripes move to it

    assert (wallet_of(organization).balance, wallet_of(organization).held) == (D(1), D("0.9"))
    hold = selectors.hold_get(organization_id=organization.pk, hold_id=hold.pk, test=False)
    services.hold_capture(tenant=tenant, hold=hold, data={"input_tokens": 1_500_000, "output_tokens": 0})

    wallet = wallet_of(organization)
    assert (wallet.balance, wallet.held) == (D("-0.5"), D(0))
    assert all(balance == 0 for stripe, balance in row_balances(organization).items() if stripe is not None)
    with pytest.raises(ledger.InsufficientBalance):
        spend(tenant, "after", "0.000001")
    with pytest.raises(ledger.InsufficientBalance):
        services.hold_create(tenant=tenant, service="gpt", idempotency_key="h2", amount=D("0.000001"), maxima={}, expires_in=None)
    wallet_fund(organization, "2")  # a credit lands on the wallet row; the next debit spreads it
    spend(tenant, "topped-up", "0.1")
    assert wallet_of(organization).balance == D("1.4")
    assert_money_invariants([organization.pk])


def test_lowering_the_credit_limit_moves_the_stripes_money_to_cover_the_wallet_row(striped):
    organization = striped["organization"]
    wallet_settings_update(organization_id=organization.pk, credit_limit=D("1"))
    spend(striped["tenant"], "deep", "1.5")  # rebalances: the limit's room is spread over the stripes too
    assert wallet_of(organization).balance == D("-0.5")

    wallet_settings_update(organization_id=organization.pk, credit_limit=D("0"))

    assert all(balance == 0 for stripe, balance in row_balances(organization).items() if stripe is not None)
    with pytest.raises(ledger.InsufficientBalance):
        spend(striped["tenant"], "after", "0.000001")
    assert_money_invariants([organization.pk])


@pytest.mark.parametrize("hint", [0, 8], ids=["thinks-unstriped", "thinks-more-stripes"])
def test_a_stale_stripe_count_on_the_hot_path_still_debits_exactly(striped, hint):
    organization = striped["organization"]
    organization.wallet_stripes = hint  # what a process that has not reloaded the organization would send

    for n in range(6):
        spend(striped["tenant"], f"stale-{n}", "0.15")

    assert wallet_of(organization).balance == D("0.1")
    with pytest.raises(ledger.InsufficientBalance):
        spend(striped["tenant"], "stale-too-much", "0.11")
    assert_money_invariants([organization.pk])


def test_batches_and_capped_keys_work_on_a_striped_wallet(striped):
    organization = striped["organization"]
    key = account_services.api_key_create(organization=organization, name="capped", spend_cap=D("0.35")).api_key
    capped = Tenant(organization=organization, user=None, api_key=key, role=None)
    events = [
        services.UsageEvent(service="gpt", idempotency_key=f"b{n}", data={"input_tokens": 150_000, "output_tokens": 0})
        for n in range(4)
    ]

    results = services.usage_record_batch(tenant=striped["tenant"], events=events)

    assert [r.status for r in results] == [201, 201, 201, 201]
    assert [r.record.balance_after for r in results] == [D("0.85"), D("0.7"), D("0.55"), D("0.4")]
    spend(capped, "capped-1", "0.3")
    with pytest.raises(services.SpendCapExceeded):
        spend(capped, "capped-2", "0.06")  # past the key's cap, though the wallet could pay
    more = services.usage_record_batch(
        tenant=striped["tenant"],
        events=[
            services.UsageEvent(service="gpt", idempotency_key=f"c{n}", data={"input_tokens": 60_000, "output_tokens": 0})
            for n in range(3)
        ],
    )
    assert [r.status for r in more] == [201, 402, 402]  # 0.1 left after the first: refused only then
    assert wallet_of(organization).balance == D("0.04")
    assert UsageRecord.objects.filter(organization_id=organization.pk).count() == 6
    assert_money_invariants([organization.pk])


def test_one_keys_striped_debits_spend_on_the_stripes_rows_and_its_cap_counts_them(striped):
    """A key's spend on a stripe goes to its row for that stripe, not the key's own (where every debit
    of a one-key tenant would queue); its lifetime spend and its cap count both."""
    organization = striped["organization"]
    created = account_services.api_key_create(organization=organization, name="hot", created_by=striped["owner"])
    tenant = Tenant(organization=organization, user=None, api_key=created.api_key, role=None)

    for n in range(6):
        spend(tenant, f"k{n}", "0.01")

    key = ApiKey.objects.get(pk=created.api_key.pk)
    by_stripe = dict(ApiKeyStripeSpend.objects.filter(api_key=key).values_list("stripe", "spent"))
    assert key.spent == 0 and set(by_stripe) <= {1, 2, 3, 4} and sum(by_stripe.values()) == D("0.06")
    assert key.lifetime_spent == D("0.06")
    listed = jwt_client(striped["owner"]).get("/api/v1/api-keys/").json()["results"]
    assert [k["spent"] for k in listed if k["id"] == key.pk] == ["0.060000000000"]

    key.spend_cap = D("0.065")  # 0.005 left, the stripes' spend counted (as staff set it in the back office)
    key.save(update_fields=["spend_cap"])
    capped = Tenant(organization=organization, user=None, api_key=key, role=None)
    with pytest.raises(services.SpendCapExceeded):
        spend(capped, "over", "0.01")
    spend(capped, "under", "0.005")
    assert ApiKey.objects.get(pk=key.pk).lifetime_spent == D("0.065")
    assert_money_invariants([organization.pk])


def test_a_batch_the_wallet_row_can_pay_posts_three_rows_and_rebalances_nothing(striped):
    """Found by review: every batch rebalanced every stripe (a leg each), so one-event batches on a
    64-stripe wallet grew the ledger 22-fold. Only a batch the wallet row cannot pay rebalances."""
    organization = striped["organization"]
    wallet_fund(organization, "1000")
    stripes_set(organization, 64)
    rebalances = Transfer.objects.filter(organization_id=organization.pk, kind=TransferKind.REBALANCE).count()
    entries = LedgerEntry.objects.filter(organization_id=organization.pk).count()
    row_before, total_before = wallet_row_balance(organization.pk), wallet_of(organization).balance

    for n in range(10):
        [result] = services.usage_record_batch(
            tenant=striped["tenant"],
            events=[services.UsageEvent(service="gpt", idempotency_key=f"one{n}", data={"input_tokens": 1, "output_tokens": 0})],
        )
        assert result.status == 201
        assert result.record.balance_after == total_before - D("0.000001") * (n + 1)  # the organization's balance

    assert Transfer.objects.filter(organization_id=organization.pk, kind=TransferKind.REBALANCE).count() == rebalances
    assert LedgerEntry.objects.filter(organization_id=organization.pk).count() - entries == 10 * 2  # two legs a batch
    assert wallet_row_balance(organization.pk) == row_before - D("0.00001")
    service_with_price(slug="free", calc_method=CalcMethod.REQUEST, unit_price="0")
    [free] = services.usage_record_batch(
        tenant=striped["tenant"], events=[services.UsageEvent(service="free", idempotency_key="free", data={})]
    )
    assert (free.status, free.record.balance_after) == (201, wallet_of(organization).balance)  # nothing charged: read
    assert_money_invariants([organization.pk])


def test_reports_show_the_organizations_totals(striped):
    spend(striped["tenant"], "r1", "0.25")
    spend(striped["tenant"], "r2", "0.05")
    client = jwt_client(striped["owner"])

    balance = client.get("/api/v1/balance/").json()
    ledger_page = client.get("/api/v1/ledger/").json()

    assert (balance["balance"], balance["available"], balance["held"]) == ("0.700000000000", "0.700000000000", "0.000000000000")
    entries = ledger_page["results"]
    assert [e["kind"] for e in entries] == ["usage", "usage", "adjustment"]  # moves between stripes are internal
    assert [(e["amount"], e["balance_after"]) for e in entries] == [
        ("-0.050000000000", "0.700000000000"),
        ("-0.250000000000", "0.750000000000"),
        ("1.000000000000", "1.000000000000"),
    ]
    summary = metering_selectors.usage_summary(
        organization_id=striped["organization"].pk, group_by="service", day_from=date(2000, 1, 1), day_to=date(2100, 1, 1)
    )
    assert [(row["service"], row["events"], row["cost"]) for row in summary] == [("gpt", 2, D("0.3"))]
    assert reconciliation_report().ok


def test_stripe_counts_outside_the_range_are_refused_and_change_nothing(striped):
    organization = striped["organization"]
    rows = row_balances(organization)

    for bad in (1, 65, -1, "4", True):
        with pytest.raises(InvalidRequest):
            wallet_settings_update(organization_id=organization.pk, stripes=bad)

    assert row_balances(organization) == rows
    assert wallet_of(organization).stripes == 4


def test_the_database_guards_stripes_like_wallets(striped):
    organization = striped["organization"]
    stripe = WalletStripe.objects.filter(organization_id=organization.pk).first()

    for statement in (
        "UPDATE payments_walletstripe SET balance = balance + 1 WHERE id = %s",  # outside the ledger
        "DELETE FROM payments_walletstripe WHERE id = %s",  # it holds money
        "UPDATE payments_walletstripe SET held = 1, ledger_seq = ledger_seq + 1 WHERE id = %s",  # holds live on the wallet row
        "UPDATE payments_walletstripe SET balance = -1, ledger_seq = ledger_seq + 1 WHERE id = %s",  # never negative
    ):
        with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement, [stripe.pk])
    with pytest.raises(IntegrityError), transaction.atomic():
        WalletStripe.objects.create(organization_id=organization.pk, stripe=9, balance=D(1))
    assert_money_invariants([organization.pk])
