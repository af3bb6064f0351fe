"""Credit grants over the API (docs/credits.md): `GET grants/` for every member and key, and the staff's
`admin/organizations/{slug}/grants/` that makes them through grant_create."""

from __future__ import annotations

import importlib
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from payments import credits
from payments.models import CreditGrant, GrantCategory, GrantSource, LedgerEntry, Transfer
from tests.conftest import jwt_client
from tests.factories import UserFactory, wallet_fund
from tests.payments.helpers import assert_error, assert_money_invariants, wallet_of

D = Decimal
GRANTS = "/api/v1/grants/"


def admin_grants(slug: str) -> str:
    return f"/api/v1/admin/organizations/{slug}/grants/"


def grant(
    organization, amount: str, *, expires_in: timedelta | None = None, priority: int = 50, category=GrantCategory.PROMOTIONAL
):
    spec = credits.GrantSpec(
        amount=D(amount),
        category=category,
        priority=priority,
        expires_at=timezone.now() + expires_in if expires_in else None,
        reason="test grant",
    )
    return credits.grant_create(organization_id=organization.pk, spec=spec, created_by_id=None)


@pytest.fixture(autouse=True)
def _staff_groups(db):
    """The groups come from data migrations, which transactional tests elsewhere truncate: run again
    the one that gives them their rights on grants and budgets (it is idempotent)."""
    from django.apps import apps

    importlib.import_module("payments.migrations.0013_redemption_grants").extend_groups(apps, None)


def staff_in(group: str):
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return jwt_client(user)


# --- GET grants/ ----------------------------------------------------------------------------------


def test_grants_list_newest_first_with_remaining_and_expiry(organization, owner_client):
    first = grant(organization, "25", expires_in=timedelta(days=30), priority=10)
    second = grant(organization, "5.5", category=GrantCategory.PAID)

    response = owner_client.get(GRANTS)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == 2
    assert body["results"][0] == {
        "id": second.pk,
        "amount": "5.500000000000",
        "remaining": "5.500000000000",
        "category": "paid",
        "priority": 50,
        "expires_at": None,
        "source": "staff",
        "created_at": body["results"][0]["created_at"],
        "expires_soon": False,
    }
    assert (body["results"][1]["id"], body["results"][1]["priority"], body["results"][1]["expires_soon"]) == (first.pk, 10, False)
    assert "reason" not in body["results"][0]  # staff notes are the back office's


@pytest.mark.parametrize(
    ("expires_in", "remaining", "soon"),
    [
        (timedelta(days=6, hours=23), None, True),
        (timedelta(minutes=5), None, True),
        (timedelta(days=7, minutes=1), None, False),
        (None, None, False),
        (timedelta(days=2), "0", False),  # nothing left to lose
    ],
)
def test_expires_soon_flags_grants_within_the_notice(organization, owner_client, expires_in, remaining, soon):
    made = grant(organization, "10", expires_in=expires_in)
    if remaining is not None:
        CreditGrant.objects.filter(pk=made.pk).update(remaining=D(remaining))

    [listed] = owner_client.get(GRANTS).json()["results"]

    assert listed["expires_soon"] is soon


def test_the_notice_period_is_a_setting(organization, owner_client, settings):
    settings.GRANT_EXPIRES_SOON = timedelta(days=30)
    grant(organization, "10", expires_in=timedelta(days=20))

    assert owner_client.get(GRANTS).json()["results"][0]["expires_soon"] is True


@pytest.mark.parametrize("who", ["owner_client", "org_admin_client", "member_client", "live_client"])
def test_every_member_and_key_sees_the_grants(organization, request, who):
    grant(organization, "10")

    response = request.getfixturevalue(who).get(GRANTS)

    assert response.status_code == 200 and response.json()["count"] == 1


def test_grants_of_another_organization_are_not_shown(organization, other_organization, other_client, owner_client):
    grant(other_organization, "99")
    mine = grant(organization, "1")

    assert [g["id"] for g in owner_client.get(GRANTS).json()["results"]] == [mine.pk]
    assert [g["amount"] for g in other_client.get(GRANTS).json()["results"]] == ["99.000000000000"]


def test_grants_paginate(organization, owner_client):
    for n in range(3):
        grant(organization, str(n + 1))

    first = owner_client.get(f"{GRANTS}?page_size=2").json()
    second = owner_client.get(first["next"]).json()

    assert first["count"] == 3
    assert [g["amount"] for g in first["results"] + second["results"]] == ["3.000000000000", "2.000000000000", "1.000000000000"]


def test_grants_require_authentication(api_client):
    assert_error(api_client.get(GRANTS), 401, "not_authenticated")


# --- staff: admin/organizations/{slug}/grants/ ----------------------------------------------------


def test_staff_grant_credits_the_wallet_through_the_ledger(organization, staff_client, staff_user):
    wallet_fund(organization, "1.25")
    body = {"amount": "10.000000000007", "category": "promotional", "priority": 5, "reason": "Outage in March"}
    expires_at = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    body["expires_at"] = expires_at.isoformat()

    response = staff_client.post(admin_grants(organization.slug), body, format="json")

    assert response.status_code == 201, response.content
    answer = response.json()
    made = CreditGrant.objects.get(pk=answer["id"])
    assert (answer["amount"], answer["remaining"], answer["category"], answer["priority"], answer["source"]) == (
        "10.000000000007",
        "10.000000000007",
        "promotional",
        5,
        "staff",
    )
    assert (answer["reason"], answer["created_by_id"], answer["transfer_id"]) == (
        "Outage in March",
        staff_user.pk,
        made.transfer_id,
    )
    assert made.expires_at == expires_at
    transfer = Transfer.objects.get(pk=made.transfer_id)
    assert (transfer.kind, transfer.memo) == ("grant", "Outage in March")
    assert dict(LedgerEntry.objects.filter(transfer=transfer).values_list("account", "amount")) == {
        "wallet": D("10.000000000007"),
        "promotions": D("-10.000000000007"),
    }
    assert Fraction(wallet_of(organization).balance) == Fraction("1.25") + Fraction("10.000000000007")
    assert_money_invariants([organization.pk])


def test_paid_credit_comes_through_the_clearing_account(organization, staff_client):
    response = staff_client.post(
        admin_grants(organization.slug), {"amount": "3", "category": "paid", "reason": "Invoice 7"}, format="json"
    )

    assert response.status_code == 201, response.content
    made = CreditGrant.objects.get(pk=response.json()["id"])
    assert (made.priority, made.expires_at, made.source) == (50, None, GrantSource.STAFF)
    assert set(LedgerEntry.objects.filter(transfer_id=made.transfer_id).values_list("account", flat=True)) == {
        "wallet",
        "payments_clearing",
    }


def test_staff_list_an_organizations_grants_with_their_reasons(organization, other_organization, staff_client):
    grant(organization, "4")
    grant(other_organization, "8")

    response = staff_client.get(admin_grants(organization.slug))

    assert response.status_code == 200
    [listed] = response.json()["results"]
    assert (listed["amount"], listed["reason"]) == ("4.000000000000", "test grant")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": "0"}, "amount"),
        ({"amount": "-5"}, "amount"),
        ({"amount": "0.0000000000001"}, "amount"),
        ({"amount": "1000000001"}, "amount"),
        ({"amount": "ten"}, "amount"),
        ({"amount": None}, "amount"),
        ({"category": "free"}, "category"),
        ({"priority": 0}, "priority"),
        ({"priority": 101}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "soon"}, "expires_at"),
        ({"reason": ""}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": 7}, "reason"),
        ({"organization": "globex"}, "organization"),
    ],
)
def test_a_bad_grant_is_refused_and_moves_nothing(organization, staff_client, change, field):
    body = {"amount": "10", "category": "promotional", "reason": "why"} | change
    before = wallet_of(organization).balance

    error = assert_error(staff_client.post(admin_grants(organization.slug), body, format="json"), 400, "invalid_request")

    assert field in error["details"], error
    assert not CreditGrant.objects.exists()
    assert wallet_of(organization).balance == before
    assert not Transfer.objects.filter(organization=organization).exists()


def test_a_missing_field_is_refused(organization, staff_client):
    error = assert_error(
        staff_client.post(admin_grants(organization.slug), {"amount": "1"}, format="json"), 400, "invalid_request"
    )

    assert {"category", "reason"} <= set(error["details"])


def test_an_unknown_organization_is_404(staff_client, db):
    body = {"amount": "1", "category": "promotional", "reason": "why"}
    assert_error(staff_client.post(admin_grants("nobody"), body, format="json"), 404, "not_found")
    assert_error(staff_client.get(admin_grants("nobody")), 404, "not_found")


def test_billing_admins_may_grant_support_may_only_look(organization):
    body = {"amount": "1", "category": "promotional", "reason": "why"}
    billing, support = staff_in("Billing admins"), staff_in("Support")

    assert billing.post(admin_grants(organization.slug), body, format="json").status_code == 201
    assert_error(support.post(admin_grants(organization.slug), body, format="json"), 403, "permission_denied")
    assert support.get(admin_grants(organization.slug)).status_code == 200
    assert CreditGrant.objects.count() == 1


@pytest.mark.parametrize("who", ["owner_client", "org_admin_client", "live_client"])
def test_customers_cannot_grant_themselves_credit(organization, request, who):
    client = request.getfixturevalue(who)
    body = {"amount": "1000", "category": "promotional", "reason": "free money"}

    assert_error(client.post(admin_grants(organization.slug), body, format="json"), 403, "permission_denied")
    assert_error(client.get(admin_grants(organization.slug)), 403, "permission_denied")
    assert not CreditGrant.objects.exists() and wallet_of(organization).balance == 0


def test_staff_grants_require_authentication(organization, api_client):
    assert_error(api_client.post(admin_grants(organization.slug), {}, format="json"), 401, "not_authenticated")
