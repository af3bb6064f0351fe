"""A redemption puts a promotional credit grant into the wallet, on the redemption's own transfer, with
the code's grant priority and expiry (docs/credits.md)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing_site.errors import InvalidRequest
from payments import ledger, services
from payments.models import CreditGrant, Redemption, RedemptionCode, Transfer
from tests.concurrency import run_concurrently
from tests.factories import organization_create
from tests.payments.helpers import assert_money_invariants, wallet_of

D = Decimal


def code(*, amount: str = "15", max_uses: int = 1, **grant_terms) -> str:
    [made] = services.redemption_codes_generate(
        batch="promo", amount=D(amount), count=1, max_uses=max_uses, expires_at=None, created_by=None, **grant_terms
    )
    return made


def test_a_redemption_is_one_credit_and_one_grant(organization, owner):
    redeemed = services.code_redeem(
        organization=organization, user=owner, code=code(amount="15.5", grant_priority=5, grant_expires_days=30)
    )

    grant = CreditGrant.objects.get(organization=organization)
    redemption = Redemption.objects.get(organization=organization)
    assert grant.transfer_id == redemption.transfer_id == redeemed.transfer_id
    assert Transfer.objects.get(pk=grant.transfer_id).kind == "redemption"
    assert Transfer.objects.filter(organization=organization).count() == 1  # one credit, not a credit and a grant
    assert (grant.amount, grant.remaining, grant.category, grant.source, grant.priority) == (
        D("15.5"),
        D("15.5"),
        "promotional",
        "redemption",
        5,
    )
    assert timedelta(days=30) - timedelta(minutes=1) < grant.expires_at - timezone.now() <= timedelta(days=30)
    assert (redeemed.amount, redeemed.balance_after) == (D("15.5"), D("15.5")) == (D("15.5"), wallet_of(organization).balance)
    assert_money_invariants([organization.pk])


def test_a_code_without_grant_terms_gives_a_grant_that_never_expires(organization, owner):
    services.code_redeem(organization=organization, user=owner, code=code())

    grant = CreditGrant.objects.get(organization=organization)
    assert (grant.priority, grant.expires_at) == (50, None)


def test_balance_after_counts_a_high_volume_wallets_stripes(organization, owner):
    services.code_redeem(organization=organization, user=owner, code=code(amount="10"))
    ledger.wallet_stripes_set(organization_id=organization.pk, stripes=4)

    redeemed = services.code_redeem(organization=organization, user=owner, code=code(amount="2.5"))

    assert redeemed.balance_after == D("12.5") == wallet_of(organization).balance
    assert_money_invariants([organization.pk])


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ({"grant_priority": 0}, "priority"),
        ({"grant_priority": 101}, "priority"),
        ({"grant_expires_days": 0}, "expires"),
        ({"grant_expires_days": 100_000}, "expires"),
    ],
)
def test_generation_refuses_bad_grant_terms(db, terms, message):
    with pytest.raises(InvalidRequest) as refused:
        code(**terms)

    assert message in refused.value.message
    assert not RedemptionCode.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_redemptions_make_one_grant_per_use(db):
    shared = code(amount="3", max_uses=3)
    organizations = [organization_create(name=f"Org {n}") for n in range(6)]

    results = run_concurrently(6, lambda n: services.code_redeem(organization=organizations[n], user=None, code=shared))

    credited = [r for r in results if isinstance(r, ledger.Posting)]
    assert len(credited) == 3, results
    assert CreditGrant.objects.count() == 3 == Redemption.objects.count()
    assert sum(wallet_of(o).balance for o in organizations) == D("9")
    assert_money_invariants([o.pk for o in organizations])
