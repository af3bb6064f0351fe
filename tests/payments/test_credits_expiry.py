"""Credit that expired but is not written off yet is not spendable on any usage path, and the write-off
happens exactly once (docs/credits.md). Time passes for a grant by moving its `expires_at` into the
past (a grant cannot be made already expired)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts import services as account_services
from metering.services import catalog
from payments import ledger
from payments.credits import grant_expire, grants_expire
from payments.models import CreditGrant, GrantAllocation, Transfer, TransferKind
from tests.conftest import key_client
from tests.factories import service_with_price, wallet_fund
from tests.payments.credit_world import (
    assert_grant_books,
    batch,
    capture,
    clock_at,
    code_of,
    expired_credits_total,
    grant,
    hold,
    use,
)
from tests.payments.helpers import money_state, wallet_of

D = Decimal


@pytest.fixture
def meter(db):
    return service_with_price(slug="meter", unit_price="1.00")


def expire_now(*grants) -> None:
    """These grants' time has come (the expiry task has not run yet)."""
    CreditGrant.objects.filter(pk__in=[g.pk for g in grants]).update(expires_at=timezone.now() - timedelta(seconds=1))


def expiring(organization, amount, **extra):
    return grant(organization, amount, expires_at=timezone.now() + timedelta(hours=1), **extra)


def tiered(meter) -> None:
    catalog.price_create(
        service=meter,
        organization_id=None,
        effective_from=None,
        created_by_id=None,
        model="tiered",
        tiers=[{"up_to": 2, "unit_price": "1"}, {"up_to": None, "unit_price": "0.5"}],
    )


PATHS = ["usage", "batch", "hold", "striped_usage", "capped_key", "tiered_usage"]


@pytest.mark.parametrize("path", PATHS)
def test_a_wallet_whose_only_money_is_an_expired_grant_refuses_every_path(organization, owner, live_client, meter, path):
    g = expiring(organization, "5")
    client = live_client
    if path == "striped_usage":
        ledger.wallet_stripes_set(organization_id=organization.pk, stripes=4)
    elif path == "capped_key":
        capped = account_services.api_key_create(organization=organization, name="capped", created_by=owner, spend_cap=D("100"))
        client = key_client(capped.secret)
    elif path == "tiered_usage":
        tiered(meter)
    expire_now(g)
    before = money_state(organization)

    if path == "batch":
        response = batch(client, ["a", "b"])
        assert [(r["status"], r["error"]["code"]) for r in response.json()["results"]] == [(402, "insufficient_balance")] * 2
    elif path == "hold":
        response = hold(client, "h", "1")
        assert (response.status_code, code_of(response)) == (402, "insufficient_balance"), response.content
    else:
        response = use(client, "a")
        assert (response.status_code, code_of(response)) == (402, "insufficient_balance"), response.content

    assert money_state(organization) == before
    assert not GrantAllocation.objects.filter(organization=organization).exists()
    assert grants_expire() == 1
    assert wallet_of(organization).balance == D(0)
    assert_grant_books(organization.pk)


def test_only_the_unexpired_money_is_spendable_and_the_expired_grant_is_never_drawn(organization, live_client, meter):
    wallet_fund(organization, "1.5")
    old = expiring(organization, "5", priority=1)  # would burn first, were it live
    live = grant(organization, "0.75", priority=90)
    expire_now(old)

    assert use(live_client, "a").status_code == 201  # 0.75 from `live`, 0.25 ungranted
    assert use(live_client, "b").status_code == 201  # 1.00 of the 1.25 ungranted left
    refused = use(live_client, "c")  # 0.25 spendable; the expired 5 is not
    assert (refused.status_code, code_of(refused)) == (402, "insufficient_balance")
    assert [r["status"] for r in batch(live_client, ["d", "e"]).json()["results"]] == [402, 402]
    assert hold(live_client, "h", "0.26").status_code == 402
    assert hold(live_client, "h2", "0.25").status_code == 201

    assert list(GrantAllocation.objects.filter(organization=organization).values_list("grant_id", "amount")) == [
        (live.pk, D("0.75"))
    ]
    assert grants_expire() == 1
    assert expired_credits_total(organization.pk) == D("5")
    assert wallet_of(organization).balance == D("0.25")
    assert_grant_books(organization.pk)


def test_the_write_off_happens_once_and_never_before_the_expiry(organization, meter):
    g = expiring(organization, "2.5")
    assert grant_expire(grant_id=g.pk) == D(0)  # not expired yet
    assert grants_expire() == 0
    assert not Transfer.objects.filter(kind=TransferKind.EXPIRY).exists()

    expire_now(g)
    assert grant_expire(grant_id=g.pk) == D("2.5")
    assert grant_expire(grant_id=g.pk) == D(0)
    assert grants_expire() == 0
    assert Transfer.objects.filter(kind=TransferKind.EXPIRY).count() == 1
    assert expired_credits_total(organization.pk) == D("2.5")
    assert grant_expire(grant_id=10**9) == D(0)  # no such grant
    assert_grant_books(organization.pk)


def test_a_grant_used_up_before_its_expiry_writes_nothing_off(organization, live_client, meter):
    g = expiring(organization, "2")
    assert [use(live_client, k).status_code for k in "ab"] == [201, 201]
    expire_now(g)
    assert grants_expire() == 0
    assert not Transfer.objects.filter(kind=TransferKind.EXPIRY).exists()
    assert_grant_books(organization.pk)


def test_a_hold_made_on_credit_that_then_expires_is_captured_as_debt(organization, live_client, meter):
    """docs/credits.md: a hold does not earmark grants, its capture draws at capture time. A hold made
    while the grant was live and captured after the grant expired draws nothing from it: the capture is
    ungranted money (the wallet may go negative: the service was delivered), and the write-off then
    takes the whole grant. The customer owes the capture; nothing was delivered for free."""
    g = expiring(organization, "3")
    made = hold(live_client, "h", "3")
    assert made.status_code == 201
    expire_now(g)
    assert use(live_client, "x").status_code == 402  # nothing available: held, and expired

    assert capture(live_client, made.json()["id"]).status_code in (200, 201)
    assert not GrantAllocation.objects.filter(transfer__kind=TransferKind.USAGE).exists()
    assert wallet_of(organization).balance == D("2")  # all of it the expired grant's, not spendable
    assert use(live_client, "y").status_code == 402
    assert grants_expire() == 1
    assert wallet_of(organization).balance == D("-1")
    assert expired_credits_total(organization.pk) == D("3")
    assert_grant_books(organization.pk)


def test_a_batch_at_a_grants_expiry_decides_with_the_clock_its_posting_uses(organization, live_client, meter):
    """A batch decides its events under the wallet's lock and then posts them: both must read expired
    credit as of the same moment. Were the decision to use another clock than the posting (the
    database's now() against the application's, or the transaction's start against the posting's
    time), a grant expiring in between would make the batch decide the events affordable and its
    posting then be refused: the whole request would fail with 402 instead of answering each event.
    Here the application's clock is an hour ahead of the database's, and the grant expires in between."""
    real = timezone.now()
    grant(organization, "5", expires_at=real + timedelta(minutes=30))
    with clock_at(real + timedelta(hours=1)):
        alone = use(live_client, "a")
        assert (alone.status_code, code_of(alone)) == (402, "insufficient_balance")  # expired, by the app's clock
        response = batch(live_client, ["b", "c"])
        assert response.status_code == 200, response.content
        assert [(r["status"], r["error"]["code"]) for r in response.json()["results"]] == [(402, "insufficient_balance")] * 2
    assert_grant_books(organization.pk)
