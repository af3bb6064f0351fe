"""A grant's terms are checked before any money moves (docs/credits.md): every bad field answers
InvalidRequest under its own name and writes nothing."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing_site.errors import InvalidRequest
from payments.credits import GrantSpec, grant_create
from payments.models import CreditGrant, GrantCategory
from tests.payments.credit_world import code_of, use
from tests.payments.helpers import money_state

D = Decimal


def spec(**changes) -> GrantSpec:
    fields = {"amount": D("5"), "category": GrantCategory.PROMOTIONAL, "priority": 50, "expires_at": None, "reason": "promo"}
    return GrantSpec(**(fields | changes))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": D("0")}, "amount"),
        ({"amount": D("-5")}, "amount"),
        ({"amount": D("0.0000000000001")}, "amount"),  # 13 decimals
        ({"amount": D("NaN")}, "amount"),
        ({"amount": D("Infinity")}, "amount"),
        ({"amount": "5"}, "amount"),  # not a Decimal
        ({"amount": D("1e30")}, "amount"),
        ({"category": "gift"}, "category"),
        ({"priority": 0}, "priority"),
        ({"priority": 101}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": "5"}, "priority"),
        ({"priority": 5.0}, "priority"),
        ({"expires_at": "past"}, "expires_at"),
        ({"expires_at": "now"}, "expires_at"),
        ({"reason": "   "}, "reason"),
    ],
)
def test_a_bad_grant_is_refused_under_its_field_and_moves_nothing(organization, changes, field):
    if changes.get("expires_at") == "past":
        changes["expires_at"] = timezone.now() - timedelta(seconds=1)
    elif changes.get("expires_at") == "now":
        changes["expires_at"] = timezone.now()
    before = money_state(organization)
    with pytest.raises(InvalidRequest) as refused:
        grant_create(organization_id=organization.pk, spec=spec(**changes), created_by_id=None)
    assert field in refused.value.details, refused.value.details
    assert money_state(organization) == before
    assert not CreditGrant.objects.exists()


def test_a_grant_at_the_edges_of_its_terms_is_made(organization):
    for priority in (1, 100):
        grant_create(
            organization_id=organization.pk,
            spec=spec(amount=D("0.000000000001"), priority=priority, expires_at=timezone.now() + timedelta(seconds=5)),
            created_by_id=None,
        )
    assert CreditGrant.objects.filter(organization=organization).count() == 2


def test_a_person_without_a_key_is_bound_by_the_organizations_budgets_only(organization, owner_client, live_key, db):
    """Usage sent with a person's token (no API key) counts against the organization's budgets and no
    key's."""
    from payments.models import Budget, BudgetSpend
    from tests.factories import service_with_price, wallet_fund

    service_with_price(slug="meter", unit_price="1.00")
    wallet_fund(organization, "10")
    org_budget = Budget.objects.create(organization=organization, period="day", amount=D(1), mode="hard")
    key_budget = Budget.objects.create(
        organization=organization, api_key=live_key.api_key, period="day", amount=D(5), mode="hard"
    )
    first = use(owner_client, "a")
    assert first.status_code == 201, first.content
    assert code_of(use(owner_client, "b")) == "budget_exceeded"
    assert BudgetSpend.objects.get(budget=org_budget).spent == D(1)
    assert not BudgetSpend.objects.filter(budget=key_budget).exists()
