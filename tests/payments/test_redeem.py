"""Redemption codes: services.redemption_codes_generate and POST redeem/ (docs/contract.md §1, §3)."""

import hashlib
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing_site.errors import InvalidRequest
from payments import services
from payments.models import Account, LedgerEntry, Redemption, RedemptionCode, Transfer, TransferKind
from tests.concurrency import run_concurrently
from tests.conftest import jwt_client
from tests.factories import organization_create
from tests.payments.helpers import assert_error, assert_money_invariants, money_state, wallet_of

D = Decimal
REDEEM_URL = "/api/v1/redeem/"


def codes(count=1, *, amount="15.00", max_uses=1, expires_at=None, batch="launch", created_by=None) -> list[str]:
    return services.redemption_codes_generate(
        batch=batch, amount=D(amount), count=count, max_uses=max_uses, expires_at=expires_at, created_by=created_by
    )


def redeem(client, code):
    return client.post(REDEEM_URL, {"code": code}, format="json")


def test_generated_codes_are_unguessable_and_stored_only_as_digests(staff_user):
    generated = codes(50, amount="5.00", max_uses=2, batch="spring", created_by=staff_user)

    assert len(set(generated)) == 50
    assert all(re.fullmatch(r"[A-HJ-NP-Z2-9]{5}(-[A-HJ-NP-Z2-9]{5}){3}", code) for code in generated)
    stored = RedemptionCode.objects.filter(batch="spring")
    assert stored.count() == 50
    digests = set(stored.values_list("digest", flat=True))
    assert digests == {hashlib.sha256(code.replace("-", "").encode()).hexdigest() for code in generated}
    for row in stored.values():
        assert not any(isinstance(value, str) and value in generated for value in row.values())
    assert set(stored.values_list("amount", "max_uses", "uses", "created_by_id")) == {(D("5"), 2, 0, staff_user.pk)}


@pytest.mark.parametrize(("count", "amount", "max_uses"), [(0, "5", 1), (10_001, "5", 1), (1, "0", 1), (1, "-5", 1), (1, "5", 0)])
def test_generation_refuses_nonsense(count, amount, max_uses, db):
    with pytest.raises(InvalidRequest):
        codes(count, amount=amount, max_uses=max_uses)
    assert RedemptionCode.objects.count() == 0


def test_redeeming_a_code_credits_the_wallet_from_promotions(owner_client, owner, organization):
    [code] = codes(amount="15.00")

    response = redeem(owner_client, code)

    assert response.status_code == 201, response.content
    assert response.json() == {"amount": "15.000000000000", "balance_after": "15.000000000000"}
    transfer = Transfer.objects.get(kind=TransferKind.REDEMPTION)
    assert (transfer.organization_id, transfer.created_by_id) == (organization.pk, owner.pk)
    assert sorted(transfer.entries.values_list("account", "amount")) == [
        (Account.PROMOTIONS, D("-15")),
        (Account.WALLET, D("15")),
    ]
    voucher = RedemptionCode.objects.get()
    assert voucher.uses == 1
    assert Redemption.objects.get().transfer_id == transfer.pk
    assert wallet_of(organization).balance == D("15")
    assert_money_invariants([organization.pk])


@pytest.mark.parametrize(
    "spell",
    [
        str.lower,
        lambda c: c.replace("-", ""),
        lambda c: f"  {c.lower()}  ",
        lambda c: c.title(),
        lambda c: c.replace("-", "").lower(),
    ],
)
def test_codes_are_case_and_dash_insensitive(org_admin_client, organization, spell):
    [code] = codes(amount="7.50")

    response = redeem(org_admin_client, spell(code))

    assert response.status_code == 201, response.content
    assert wallet_of(organization).balance == D("7.5")


def test_an_expired_code_is_refused(owner_client, organization):
    [code] = codes(expires_at=timezone.now() - timedelta(seconds=1))
    before = money_state(organization)

    assert_error(redeem(owner_client, code), 400, "invalid_code")

    assert money_state(organization) == before
    assert RedemptionCode.objects.get().uses == 0


def test_a_code_that_has_not_expired_yet_works(owner_client, organization):
    [code] = codes(expires_at=timezone.now() + timedelta(minutes=5))

    assert redeem(owner_client, code).status_code == 201


def test_a_used_up_code_is_refused(owner_client, organization, other_owner_client, other_organization):
    [code] = codes(max_uses=1)
    assert redeem(other_owner_client, code).status_code == 201
    before = money_state(organization)

    assert_error(redeem(owner_client, code), 400, "invalid_code")

    assert money_state(organization) == before
    assert RedemptionCode.objects.get().uses == 1
    assert Redemption.objects.count() == 1


def test_an_organization_redeems_a_code_once(owner_client, org_admin_client, organization):
    [code] = codes(max_uses=5)
    assert redeem(owner_client, code).status_code == 201
    before = money_state(organization)

    assert_error(redeem(org_admin_client, code), 400, "invalid_code")
    assert_error(redeem(owner_client, code.lower()), 400, "invalid_code")

    assert money_state(organization) == before
    assert RedemptionCode.objects.get().uses == 1
    assert wallet_of(organization).balance == D("15")


@pytest.mark.parametrize("code", ["AAAAA-BBBBB-CCCCC-DDDDD", "nope", "-", "🎟️"])
def test_an_unknown_code_is_refused(owner_client, organization, code):
    codes()
    before = money_state(organization)

    assert_error(redeem(owner_client, code), 400, "invalid_code")

    assert money_state(organization) == before


@pytest.mark.parametrize("body", [{}, {"code": ""}, {"code": None}, {"code": "x" * 65}])
def test_a_missing_code_is_an_invalid_request(owner_client, organization, body):
    before = money_state(organization)

    assert "code" in assert_error(owner_client.post(REDEEM_URL, body, format="json"), 400, "invalid_request")["details"]
    assert money_state(organization) == before


@pytest.mark.parametrize("caller", ["member_client", "live_client"])
def test_redeeming_is_for_owners_and_admins(request, organization, caller):
    [code] = codes()
    before = money_state(organization)

    assert_error(redeem(request.getfixturevalue(caller), code), 403, "permission_denied")

    assert money_state(organization) == before
    assert RedemptionCode.objects.get().uses == 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_concurrent_redemptions_never_exceed_max_uses(db):
    [code] = codes(amount="10.00", max_uses=3)
    organizations = [organization_create(name=f"Tenant {i}") for i in range(8)]
    clients = [jwt_client(org.memberships.get().user) for org in organizations]
    statuses = dict(enumerate(run_concurrently(len(clients), lambda i: redeem(clients[i], code).status_code, reraise=True)))

    assert sorted(statuses.values()) == [201] * 3 + [400] * 5, statuses
    assert RedemptionCode.objects.get().uses == 3
    winners = {organizations[i].pk for i, status in statuses.items() if status == 201}
    assert set(Redemption.objects.values_list("organization_id", flat=True)) == winners
    for organization in organizations:
        assert wallet_of(organization).balance == (D("10") if organization.pk in winners else 0)
    assert LedgerEntry.objects.filter(account=Account.PROMOTIONS).count() == 3
    assert_money_invariants([o.pk for o in organizations])


def test_a_code_in_another_currency_is_refused(organization, owner_client):
    from payments.models import RedemptionCode
    from payments.services import redemption_codes_generate

    (code,) = redemption_codes_generate(batch="eur", amount=D("5"), count=1, expires_at=None, created_by=None)
    RedemptionCode.objects.update(currency="EUR")
    response = owner_client.post("/api/v1/redeem/", {"code": code}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_code"
