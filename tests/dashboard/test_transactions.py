"""Billing's transaction history: read from the ledger's wallet entries, usage gathered per day, a
running balance that ends at the wallet's balance (checked against an exact oracle), and the redeem box."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest

from payments import selectors as payment_selectors
from payments import services as payment_services
from payments.models import TransferKind, Wallet
from payments.selectors import StatementEntry, statement_lines
from tests.dashboard.conftest import meter, new_key
from tests.factories import wallet_fund
from tests.payments.payment_helpers import settled_sandbox_payment

D = Decimal
PING = Fraction("0.001")  # the catalogue's price per request
GPT_INPUT_PER_TOKEN = Fraction("0.15") / 1_000_000


def all_lines(organization, *, size: int, scan: int) -> list:
    """Every statement line, newest first, following the `older` cursor page by page."""
    lines, before = [], None
    while True:
        page = payment_selectors.wallet_statement(organization_id=organization.pk, tz=UTC, before=before, size=size, scan=scan)
        lines += page.lines
        if page.older is None:
            return lines
        before = page.older


@pytest.fixture(params=["one row", "striped"])
def history(request, organization, catalogue, staff_user):
    """Recharge, usage, a refund, an adjustment, a code, more usage; answers the exact expected balance.
    "striped": the wallet turns high-volume after the recharge, so its entries' own balance_after are
    per row (docs/contract.md §2.9) and the statement must still read the organization's."""
    code = payment_services.redemption_codes_generate(batch="t", amount=D("5"), count=1, expires_at=None, created_by=None)[0]
    payment = settled_sandbox_payment(organization, "25.00")
    if request.param == "striped":
        payment_services.wallet_settings_update(organization_id=organization.pk, stripes=4)
    key = new_key(organization)
    for n in range(3):
        meter(key, "ping", f"p{n}")
    meter(key, "gpt", "g1", input_tokens=1000, output_tokens=0)
    payment_services.payment_refund(payment=payment, amount=D("2.50"), reason="goodwill", staff=staff_user)
    wallet_fund(organization, "-0.75", reason="correction")
    payment_services.code_redeem(organization=organization, user=None, code=code)
    for n in range(2):
        meter(key, "ping", f"q{n}")
    return Fraction("25") + 5 * -PING - 1000 * GPT_INPUT_PER_TOKEN - Fraction("2.50") - Fraction("0.75") + Fraction("5")


@pytest.mark.django_db
@pytest.mark.parametrize(("size", "scan"), [(25, 5000), (2, 5000), (2, 3), (1, 1)])
def test_running_balance_matches_the_ledger_and_ends_at_the_wallet_balance(organization, history, size, scan):
    lines = all_lines(organization, size=size, scan=scan)
    wallet = Wallet.objects.get(organization=organization)
    assert Fraction(wallet.balance) == history
    assert Fraction(lines[0].balance_after) == history  # newest first: the running balance ends at the wallet's
    assert sum(Fraction(line.amount) for line in lines) == history  # every cent is on some line
    for newer, older in itertools.pairwise(lines):
        assert newer.balance_after - newer.amount == older.balance_after
    assert lines[-1].balance_after - lines[-1].amount == 0
    assert TransferKind.REBALANCE not in {line.kind for line in lines}  # money moving between a wallet's rows


@pytest.mark.django_db
def test_usage_is_one_line_per_run_of_a_day_and_other_transfers_one_each(organization, history):
    lines = all_lines(organization, size=25, scan=5000)
    assert [(line.kind, line.entries) for line in lines] == [
        (TransferKind.USAGE, 2),
        (TransferKind.REDEMPTION, 1),
        (TransferKind.ADJUSTMENT, 1),
        (TransferKind.REFUND, 1),
        (TransferKind.USAGE, 4),
        (TransferKind.RECHARGE, 1),
    ]
    assert Fraction(lines[4].amount) == 3 * -PING - 1000 * GPT_INPUT_PER_TOKEN  # three pings and one gpt
    # Pages that read 3 entries at most cut a day's run of usage: its newer parts say so, and add up.
    cut = [line for line in all_lines(organization, size=25, scan=3) if line.kind == TransferKind.USAGE]
    assert [(line.entries, line.partial) for line in cut] == [(2, False), (1, True), (3, False)]


def _entry(n: int, at: datetime, amount: str, balance: str, kind=TransferKind.USAGE) -> StatementEntry:
    return StatementEntry(id=n, amount=D(amount), balance_after=D(balance), created_at=at, kind=kind, reference="", memo="")


def test_days_are_the_readers_local_days():
    late = datetime(2026, 3, 9, 23, 30, tzinfo=UTC)
    entries = [  # newest first
        _entry(3, late + timedelta(hours=1), "-1", "7"),
        _entry(2, late, "-1", "8"),
        _entry(1, late - timedelta(hours=1), "9", "9", kind=TransferKind.RECHARGE),
    ]
    in_utc, _ = statement_lines(entries, tz=UTC, size=10)
    in_paris, _ = statement_lines(entries, tz=ZoneInfo("Europe/Paris"), size=10)
    assert [(line.day.day, line.amount, line.balance_after) for line in in_utc] == [(10, -1, 7), (9, -1, 8), (9, 9, 9)]
    assert [(line.day.day, line.amount, line.balance_after) for line in in_paris] == [(10, -2, 7), (9, 9, 9)]


@pytest.mark.django_db
def test_billing_page_shows_the_transactions_with_exact_amounts_on_hover(owner_web, organization, history):
    html = owner_web.get("/dashboard/billing/").content.decode()
    table = html[html.index('data-testid="transactions-table"') :]
    assert "API usage" in table and "5 charges" not in table and "4 charges" in table and "2 charges" in table
    assert "Promotional code redeemed" in table and "correction" in table and "Refund" in table
    balance = Wallet.objects.get(organization=organization).balance
    assert Fraction(balance) == history
    assert f'title="{format(balance.normalize(), "f")} USD"' in table


@pytest.mark.django_db
def test_another_organizations_transactions_never_show(other_web, organization, history, other_organization):
    wallet_fund(other_organization, "3")
    response = other_web.get("/dashboard/billing/")
    lines = response.context["statement"].lines
    assert [(line.kind, line.amount) for line in lines] == [(TransferKind.ADJUSTMENT, D("3"))]
    assert "API usage" not in response.content.decode()


@pytest.mark.django_db
def test_members_cannot_see_transactions_or_redeem(member_web, organization):
    assert member_web.get("/dashboard/billing/").status_code == 403
    assert member_web.post("/dashboard/billing/redeem/", {"code": "X"}).status_code == 403


@pytest.mark.django_db
def test_redeeming_a_code_credits_the_wallet_once(owner_web, organization):
    code = payment_services.redemption_codes_generate(batch="t", amount=D("7.5"), count=1, expires_at=None, created_by=None)[0]
    response = owner_web.post("/dashboard/billing/redeem/", {"code": code.lower()}, follow=True)
    assert "Code redeemed: $7.50 added to your balance." in response.content.decode()
    assert Wallet.objects.get(organization=organization).balance == D("7.5")
    again = owner_web.post("/dashboard/billing/redeem/", {"code": code})
    assert again.status_code == 400 and "This code has been used up." in again.content.decode()
    assert Wallet.objects.get(organization=organization).balance == D("7.5")


@pytest.mark.django_db
@pytest.mark.parametrize(("code", "message"), [("", "This field is required."), ("NOPE-NOPE", "Unknown code.")])
def test_a_bad_code_says_why_and_changes_nothing(owner_web, organization, code, message):
    response = owner_web.post("/dashboard/billing/redeem/", {"code": code})
    assert response.status_code == 400 and message in response.content.decode()
    assert Wallet.objects.get(organization=organization).balance == 0


@pytest.mark.django_db
def test_a_forged_statement_cursor_is_ignored(owner_web, organization, history):
    for cursor in ("abc", "-1", "9" * 30):
        assert owner_web.get(f"/dashboard/billing/?before={cursor}").status_code == 200


def _csv_rows(response) -> list[dict[str, str]]:
    import csv
    import io

    assert response.status_code == 200, response
    assert response.streaming and response["Content-Type"] == "text/csv; charset=utf-8"
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.mark.django_db
@pytest.mark.parametrize("chunk", [2000, 2])
def test_transactions_csv_has_every_line_with_every_digit(owner_web, organization, history, monkeypatch, chunk):
    """The export streams the same lines as the page (a day's usage is one line), amounts as stored:
    they add up, against the exact oracle, to the wallet's balance. A small chunk size makes a day's
    run of usage span several fetches of the server-side cursor."""
    monkeypatch.setattr(payment_selectors, "STATEMENT_EXPORT_CHUNK", chunk)
    rows = _csv_rows(owner_web.get("/dashboard/billing/transactions.csv"))
    lines = all_lines(organization, size=25, scan=5000)
    assert [(row["type"], int(row["entries"])) for row in rows] == [(line.kind, line.entries) for line in lines]
    assert [row["amount"] for row in rows] == [format(line.amount, "f") for line in lines]
    assert all(len(row["amount"].split(".")[1]) == 12 for row in rows)  # every stored digit, never rounded
    assert sum(Fraction(row["amount"]) for row in rows) == history
    assert Fraction(rows[0]["balance_after"]) == history
    for newer, older in itertools.pairwise(rows):
        assert Fraction(newer["balance_after"]) - Fraction(newer["amount"]) == Fraction(older["balance_after"])
    assert {row["currency"] for row in rows} == {"USD"}
    assert [row["memo"] for row in rows if row["type"] == TransferKind.ADJUSTMENT] == ["correction"]


@pytest.mark.django_db
def test_transactions_csv_neutralises_formulas_and_shows_local_days(owner_web, owner, organization):
    """A memo is staff text: a formula in it reaches the spreadsheet as text. Days and times are the
    reader's own (here UTC+14, so an entry made at 11:00 UTC is on the next local day)."""
    from accounts import services as account_services

    account_services.user_time_zone_set(user=owner, time_zone="Pacific/Kiritimati")
    wallet_fund(organization, "1.5", reason='=HYPERLINK("http://evil.example","x")')
    rows = _csv_rows(owner_web.get("/dashboard/billing/transactions.csv"))
    assert [row["memo"] for row in rows] == ['\'=HYPERLINK("http://evil.example","x")']
    created = payment_selectors.wallet_statement(organization_id=organization.pk, tz=UTC).lines[0].newest_at
    local = created.astimezone(ZoneInfo("Pacific/Kiritimati"))
    assert rows[0]["day"] == local.date().isoformat() and rows[0]["newest_at"] == local.isoformat()
    assert rows[0]["newest_at"].endswith("+14:00")
    html = owner_web.get("/dashboard/billing/").content.decode()
    assert 'href="/dashboard/billing/transactions.csv"' in html


@pytest.mark.django_db
def test_transactions_csv_is_the_organizations_own_and_for_managers_only(
    other_web, member_web, organization, history, other_organization
):
    wallet_fund(other_organization, "3")
    rows = _csv_rows(other_web.get("/dashboard/billing/transactions.csv"))
    assert [(row["type"], row["amount"]) for row in rows] == [(TransferKind.ADJUSTMENT, "3.000000000000")]
    assert member_web.get("/dashboard/billing/transactions.csv").status_code == 403
