"""`manage.py seed_demo` (what `make run` starts with): the demo catalogue with a tiered price and two plans, once."""

import io

import pytest
from django.core.management import call_command

from metering.models import Plan, PlanAllowance, Price, PriceModel, Service


@pytest.mark.django_db
def test_the_demo_has_a_tiered_service_and_two_plans_and_a_second_run_changes_nothing(settings):
    call_command("seed_demo", stdout=io.StringIO())
    counts = (Service.objects.count(), Price.objects.count(), Plan.objects.count(), PlanAllowance.objects.count())
    call_command("seed_demo", stdout=io.StringIO())
    assert (Service.objects.count(), Price.objects.count(), Plan.objects.count(), PlanAllowance.objects.count()) == counts
    tiered = Price.objects.get(service__slug="text-embedding-3-small")
    assert tiered.model == PriceModel.TIERED and len(tiered.tiers) == 2
    assert set(Plan.objects.values_list("slug", flat=True)) == {"starter", "pro"}
    assert PlanAllowance.objects.get(plan__slug="starter", service__slug="gpt-4o-mini").quantity == 5_000_000
    assert Price.objects.get(plan__slug="pro", service__slug="gpt-4o").input_price == 2


@pytest.mark.django_db
def test_the_demo_organization_has_a_welcome_grant_and_a_soft_budget_once(settings):
    from payments.models import Budget, CreditGrant, Wallet

    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo", stdout=io.StringIO())
    grant = CreditGrant.objects.get()
    assert (grant.amount, grant.remaining, grant.priority, grant.category) == (5, 5, 10, "promotional")
    assert grant.expires_at is not None
    assert Budget.objects.get().mode == "soft"
    assert Wallet.objects.get(organization=grant.organization).balance == settings.STARTING_DEMO_BALANCE + 5
