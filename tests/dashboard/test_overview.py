"""Overview: balance cards, spend from the rollups, the SVG chart, the low-balance warning."""

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from dashboard import charts, services
from dashboard.templatetags.dashboard import money_format, money_html, plain_amount
from metering.models import UsageRollup
from tests.dashboard.conftest import meter, new_key
from tests.factories import wallet_fund


@pytest.mark.django_db
def test_overview_shows_balance_available_and_spend(owner_web, funded, catalogue):
    key = new_key(funded)
    meter(key, "gpt", "a", input_tokens=1_000_000, output_tokens=0)  # 0.15
    meter(key, "ping", "b")  # 0.001
    meter(new_key(funded, mode="test"), "gpt", "c", input_tokens=1_000_000, output_tokens=0)  # test: never counted
    html = owner_web.get("/dashboard/").content.decode()
    # Rounded half-even to cents for the eye; every stored digit on hover.
    assert 'data-testid="balance" data-balance><span class="money" title="9.849 USD" data-exact="9.849">$9.85</span>' in html
    assert 'data-testid="spend-today"><span class="money" title="0.151 USD" data-exact="0.151">$0.15</span>' in html
    assert 'data-testid="spend-month"><span class="money" title="0.151 USD" data-exact="0.151">$0.15</span>' in html
    # All of it today: the chart says so and shows each service's share, in the service's own colour.
    assert 'data-testid="chart-one-day"' in html and "All of it on" in html
    assert f'<rect class="s{charts.colours(["gpt", "ping"])["gpt"]}"' in html


@pytest.mark.django_db
def test_overview_warns_below_the_threshold_only(owner_web, organization):
    wallet_fund(organization, "5")
    assert 'data-testid="low-balance"' not in owner_web.get("/dashboard/").content.decode()  # threshold 0: off
    services.wallet_alerts_update(organization_id=organization.pk, low_balance_threshold=Decimal("10"), alert_webhook_url="")
    html = owner_web.get("/dashboard/").content.decode()
    assert 'data-testid="low-balance"' in html and "below your alert threshold of $10.00" in html


@pytest.mark.django_db
def test_overview_shows_members_no_payments(member_web, owner_web):
    assert "Recent payments" in owner_web.get("/dashboard/").content.decode()
    html = member_web.get("/dashboard/").content.decode()
    assert "Recent payments" not in html and "Add funds" not in html


@pytest.mark.django_db
def test_overview_reads_only_its_own_organizations_spend(owner_web, organization, other_organization, catalogue):
    today = timezone.now().date()
    UsageRollup.objects.create(organization=other_organization, service=catalogue["gpt"], day=today, events=1, cost=Decimal("7"))
    html = owner_web.get("/dashboard/").content.decode()
    assert 'data-testid="spend-today"><span class="money" title="0 USD" data-exact="0">$0.00<' in html and "$7.00" not in html


@pytest.mark.django_db
def test_overview_query_count_does_not_grow_with_history(owner_web, organization, catalogue, django_assert_max_num_queries):
    today = timezone.now().date()
    for days_ago in range(60):
        for service in ("gpt", "ping", "translate"):
            UsageRollup.objects.create(
                organization=organization,
                service=catalogue[service],
                day=today - timedelta(days=days_ago),
                events=1,
                cost=Decimal("0.5"),
            )
    with django_assert_max_num_queries(12):
        assert owner_web.get("/dashboard/").status_code == 200


def test_chart_stacks_services_per_day_in_proportion():
    day = date(2026, 3, 10)
    rows = [
        {"day": day, "service": "a", "cost": Decimal("3")},
        {"day": day, "service": "b", "cost": Decimal("1")},
        {"day": day + timedelta(days=1), "service": "a", "cost": Decimal("2")},
    ]
    chart = charts.spend_chart(rows, day_from=day - timedelta(days=1), day_to=day + timedelta(days=1))
    assert [bar.total for bar in chart.bars] == [0, 4, 2]
    first, second = chart.bars[1].segments
    assert (first.name, second.name) == ("a", "b")  # biggest spender at the bottom, same colour every day
    assert Decimal(first.height) == 3 * Decimal(second.height)
    assert Decimal(second.y) + Decimal(second.height) == Decimal(first.y)  # stacked
    assert chart.ticks[-1].value >= 4 and [s.name for s in chart.series] == ["a", "b"]
    assert chart.bars[0].segments == []


def test_chart_groups_small_services_as_other():
    day = date(2026, 3, 10)
    rows = [{"day": day, "service": f"s{i}", "cost": Decimal(10 - i)} for i in range(9)]
    chart = charts.spend_chart(rows, day_from=day, day_to=day)
    assert [s.name for s in chart.series][-1] == "Other"
    assert len(chart.series) == charts.SERIES_MAX
    assert chart.series[-1].total == sum(Decimal(10 - i) for i in range(charts.SERIES_MAX - 1, 9))


def test_empty_chart():
    chart = charts.spend_chart([], day_from=date(2026, 1, 1), day_to=date(2026, 1, 30))
    assert chart.empty and len(chart.bars) == 30 and chart.series == [] and chart.one_day is None


def test_a_service_keeps_its_colour_whatever_its_rank_or_company():
    """The colour is fixed by the slug: the same on the overview and the usage page, on every load,
    whether the service spends most or least, alone or among others."""
    day = date(2026, 3, 10)
    alone = charts.spend_chart([{"day": day, "service": "gpt-4o", "cost": Decimal(1)}], day_from=day, day_to=day)
    ranked_last = charts.spend_chart(
        [
            {"day": day, "service": "gpt-4o", "cost": Decimal(1)},
            {"day": day, "service": "translate", "cost": Decimal(50)},
            {"day": day + timedelta(days=1), "service": "dall-e-3", "cost": Decimal(9)},
        ],
        day_from=day,
        day_to=day + timedelta(days=1),
    )
    colour = {s.slug: s.index for s in ranked_last.series}
    assert alone.series[0].index == colour["gpt-4o"] == charts.colour_of("gpt-4o")
    assert len(set(colour.values())) == 3  # never two series of one chart in one colour
    assert all(seg.series == colour[seg_slug] for bar in ranked_last.bars for seg, seg_slug in _slugs(bar, ranked_last))


def _slugs(bar, chart):
    by_name = {s.name: s.slug for s in chart.series}
    return [(seg, by_name[seg.name]) for seg in bar.segments]


def test_colour_clashes_move_to_the_next_free_colour_in_slug_order():
    slugs = [f"service-{i}" for i in range(40)]
    clashing = next((a, b) for a in slugs for b in slugs if a < b and charts.colour_of(a) == charts.colour_of(b))
    assigned = charts.colours(clashing)
    assert assigned[clashing[0]] == charts.colour_of(clashing[0])
    assert assigned[clashing[1]] == (charts.colour_of(clashing[1]) + 1) % charts.PALETTE


@pytest.mark.django_db
def test_overview_chart_with_no_data_says_so_instead_of_an_empty_frame(owner_web, organization):
    html = owner_web.get("/dashboard/").content.decode()
    assert html.count('data-testid="chart-none"') == 2  # desktop and phone variants
    assert "No live usage in the last 30 days." in html and "No live usage in the last 14 days." in html
    assert "chart-bars" not in html


@pytest.mark.django_db
def test_overview_chart_with_one_service_over_days_names_it(owner_web, organization, catalogue):
    today = timezone.now().date()
    for days_ago in (1, 3):
        UsageRollup.objects.create(
            organization=organization,
            service=catalogue["ping"],
            day=today - timedelta(days=days_ago),
            events=1,
            cost=Decimal("0.5"),
        )
    html = owner_web.get("/dashboard/").content.decode()
    assert "chart-bars" in html and f"All from {catalogue['ping'].name}" in html


@pytest.mark.parametrize(
    ("top", "step"),
    [
        (Decimal("21.5"), Decimal(5)),
        (Decimal("0.0031"), Decimal("0.001")),
        (Decimal(100), Decimal(20)),
        (Decimal(0), Decimal("0.25")),
    ],
)
def test_nice_axis_steps(top, step):
    assert charts.nice_step(top) == step


@pytest.mark.parametrize(
    ("amount", "text", "precise"),
    [
        (Decimal("25"), "$25.00", "$25.00"),
        (Decimal("1234.5"), "$1,234.50", "$1,234.50"),
        (Decimal("0.00015"), "$0.00", "$0.00015"),
        (Decimal("0.123456789"), "$0.12", "$0.123457"),
        (Decimal("0.00000015"), "$0.00", "<$0.000001"),
        (Decimal("-2"), "−$2.00", "−$2.00"),
        (Decimal("-0.001"), "$0.00", "−$0.001"),
        (Decimal("0E-12"), "$0.00", "$0.00"),
        # Half-even: a tie goes to the even cent, never always up.
        (Decimal("0.125"), "$0.12", "$0.125"),
        (Decimal("0.135"), "$0.14", "$0.135"),
        (Decimal("2.675000000001"), "$2.68", "$2.675000"),
        (None, "—", "—"),
    ],
)
def test_money_format(amount, text, precise):
    assert money_format(amount) == text
    assert money_format(amount, precise=True) == precise


def test_money_format_other_currencies():
    assert money_format(Decimal("3.5"), "CHF") == "3.50 CHF"
    assert money_format(Decimal("1234.5"), "JPY") == "¥1,234" and money_format(Decimal("1235.5"), "JPY") == "¥1,236"
    assert money_format(Decimal("1.0005"), "KWD") == "1.000 KWD"
    assert money_html(Decimal("12.3456"), "USD") == '<span class="money" title="12.3456 USD" data-exact="12.3456">$12.35</span>'
    assert money_html(Decimal("12.300000000000"), "USD") == '<span class="money" title="12.3 USD" data-exact="12.3">$12.30</span>'
    assert plain_amount(Decimal("150.000000000000")) == "150.00" and plain_amount(Decimal("0.0005")) == "0.0005"


@pytest.mark.django_db
def test_runway_is_the_available_balance_over_the_last_7_days_rate(owner_web, organization, catalogue):
    wallet_fund(organization, "100")
    today = timezone.now().date()
    for days_ago in range(1, 8):  # 7 whole days at $2.50 a day; today's spend is not counted yet
        UsageRollup.objects.create(
            organization=organization,
            service=catalogue["gpt"],
            day=today - timedelta(days=days_ago),
            events=1,
            cost=Decimal("2.5"),
        )
    UsageRollup.objects.create(organization=organization, service=catalogue["gpt"], day=today, events=1, cost=Decimal("99"))
    html = owner_web.get("/dashboard/").content.decode()
    assert "About 40 days left at the last 7 days' rate" in html  # 100 / 2.50


@pytest.mark.django_db
def test_no_spend_means_no_runway_guess(owner_web, organization):
    wallet_fund(organization, "5")
    assert "no spend in the last 7 days" in owner_web.get("/dashboard/").content.decode()


def test_burn_rate_and_runway_are_exact():
    from dashboard.selectors import burn_rate, runway_days

    today = date(2026, 3, 10)
    rows = [{"day": today - timedelta(days=n), "cost": Decimal("1.4")} for n in range(0, 9)]
    assert burn_rate(rows, today=today, days=7) == Decimal("1.4")  # days 1..7 only
    assert runway_days(available=Decimal("10"), per_day=Decimal("1.4")) == 7
    assert runway_days(available=Decimal("-1"), per_day=Decimal("1")) == 0
    assert runway_days(available=Decimal("10"), per_day=Decimal(0)) is None
