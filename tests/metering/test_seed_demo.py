"""`manage.py seed_demo` (what `make run` starts with): the demo catalogue with a tiered price and two plans, once."""

import io
from decimal import Decimal
from fractions import Fraction

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
    balance = Wallet.objects.get(organization=grant.organization).balance
    assert Fraction(balance) == Fraction(settings.STARTING_DEMO_BALANCE) + 5 - _demo_usage_cost()


def _demo_usage_cost() -> Fraction:
    """Last month's demo usage priced by hand from the demo's prices (per 1M tokens, 1K characters and
    words, a 512-px tile, a request)."""
    from metering.management.commands.seed_demo import LAST_MONTH_USAGE, SERVICES

    prices = {slug: fields for slug, _, _, fields in SERVICES}
    total = Fraction(0)
    for _, slug, quantities in LAST_MONTH_USAGE:
        price = {name: Fraction(value) for name, value in prices[slug].items() if isinstance(value, Decimal)}
        if "input_tokens" in quantities:
            total += Fraction(quantities["input_tokens"]) * price["input_price"] / 1_000_000
            total += Fraction(quantities["output_tokens"]) * price["output_price"] / 1_000_000
        elif "characters" in quantities:
            total += Fraction(quantities["characters"]) * price["unit_price"] / 1000
        elif "words" in quantities:
            total += Fraction(quantities["words"]) * price["unit_price"] / 1000
        elif "width" in quantities:
            tiles = -(-quantities["width"] // 512) * -(-quantities["height"] // 512) * quantities["images"]
            total += tiles * price["unit_price"]
        else:
            total += price["unit_price"]
    return total


@pytest.mark.django_db
def test_the_demo_has_last_months_statement_equal_to_its_usage_priced_by_hand(settings):
    from payments.models import Wallet
    from statements.models import Statement

    settings.STATEMENT_ISSUE_DELAY_SECONDS = 0  # in a month's first hour too
    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo", stdout=io.StringIO())
    statement = Statement.objects.get()
    usage = _demo_usage_cost()
    assert (statement.number, statement.period_end.day, statement.period_end.hour) == (1, 1, 0)
    assert statement.opening_balance == 0
    assert Fraction(statement.closing_balance) == Fraction(settings.STARTING_DEMO_BALANCE) - usage
    assert Fraction(sum(line.amount for line in statement.lines.filter(kind="usage"))) == -usage
    assert {line.service.slug for line in statement.lines.filter(kind="usage")} == {
        "gpt-4o",
        "gpt-4o-mini",
        "translate",
        "summarize-words",
        "dall-e-3",
        "moderation",
    }
    wallet = Wallet.objects.get(organization=statement.organization)
    assert Fraction(wallet.balance) == Fraction(settings.STARTING_DEMO_BALANCE) + 5 - usage
