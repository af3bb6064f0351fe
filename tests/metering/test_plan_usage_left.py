"""metering.selectors.plan_usage_left: what an organization's plan includes this period, used and left
(docs/contract.md §3, `GET services/`)."""

from datetime import UTC, datetime

import pytest

from metering.models import Plan, PlanAllowance, SubscriptionStatus
from metering.selectors import Included, plan_usage_left
from metering.services.positions import position_grant
from tests.factories import ServiceFactory
from tests.metering.plan_helpers import grant, subscribe, use


@pytest.fixture
def plan(db):
    return Plan.objects.create(slug="team", name="Team", monthly_fee="20")


@pytest.fixture
def services(db):
    return {"ping": ServiceFactory(slug="ping"), "dalle": ServiceFactory(slug="dalle"), "other": ServiceFactory(slug="other")}


def test_no_subscription_includes_nothing(organization, plan, services):
    PlanAllowance.objects.create(plan=plan, service=services["ping"], quantity=100)

    assert plan_usage_left(organization_id=organization.pk) == {}


def test_included_used_and_left_come_from_this_periods_live_position(organization, plan, services):
    PlanAllowance.objects.create(plan=plan, service=services["ping"], quantity=1000)
    PlanAllowance.objects.create(plan=plan, service=services["dalle"], quantity=50)
    subscribe(organization, plan)
    grant(organization, services["ping"], 1000)
    use(organization, services["ping"], 300)
    use(organization, services["ping"], 999, test=True)  # test usage never eats the allowance
    grant(organization, services["dalle"], 50)
    use(organization, services["dalle"], 80)  # over the allowance: nothing left, all used

    included = plan_usage_left(organization_id=organization.pk)

    assert included == {
        services["ping"].pk: Included(quantity=1000, used=300, left=700),
        services["dalle"].pk: Included(quantity=50, used=50, left=0),
    }
    assert included[services["ping"].pk] == (1000, 300, 700)  # a plain tuple for callers that unpack it


def test_a_past_due_subscription_has_nothing_left(organization, plan, services):
    PlanAllowance.objects.create(plan=plan, service=services["ping"], quantity=1000)
    subscribe(organization, plan, status=SubscriptionStatus.PAST_DUE)
    grant(organization, services["ping"], 1000)

    assert plan_usage_left(organization_id=organization.pk) == {services["ping"].pk: Included(1000, 1000, 0)}


def test_a_canceled_subscription_includes_nothing(organization, plan, services):
    PlanAllowance.objects.create(plan=plan, service=services["ping"], quantity=1000)
    subscribe(organization, plan, status=SubscriptionStatus.CANCELED)
    grant(organization, services["ping"], 1000)

    assert plan_usage_left(organization_id=organization.pk) == {}


def test_last_periods_free_units_do_not_count(organization, plan, services):
    PlanAllowance.objects.create(plan=plan, service=services["ping"], quantity=10)
    subscribe(organization, plan)
    position_grant(
        organization_id=organization.pk, service_id=services["ping"].pk, period=datetime(2020, 1, 1, tzinfo=UTC).date(), units=10
    )

    assert plan_usage_left(organization_id=organization.pk) == {services["ping"].pk: Included(10, 10, 0)}


def test_each_organization_sees_its_own_figures(organization, other_organization, plan, services):
    PlanAllowance.objects.create(plan=plan, service=services["ping"], quantity=100)
    subscribe(organization, plan)
    subscribe(other_organization, plan)
    grant(organization, services["ping"], 100)
    grant(other_organization, services["ping"], 100)
    use(other_organization, services["ping"], 60)

    assert plan_usage_left(organization_id=organization.pk) == {services["ping"].pk: Included(100, 0, 100)}
    assert plan_usage_left(organization_id=other_organization.pk) == {services["ping"].pk: Included(100, 60, 40)}
