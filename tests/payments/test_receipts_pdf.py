"""The receipt PDF, read back with pypdf: the parties, the payment, the refunds and the net paid, the
currency's decimals, Unicode names. Payments are credited through the real settlement path."""

from decimal import Decimal
from fractions import Fraction

import pytest

from accounts import services as account_services
from accounts.models import Organization
from payments.models import Receipt, Refund, RefundStatus
from payments.receipts import receipt_filename, receipt_get, receipt_pdf
from tests.factories import UserFactory, organization_create
from tests.payments.payment_helpers import sandbox_notify, sandbox_payment, settled_sandbox_payment
from tests.payments.receipt_helpers import pdf_text
from tests.payments.test_refunds import refund

pytestmark = pytest.mark.django_db

D = Decimal


@pytest.fixture
def seller(settings):
    settings.SELLER_NAME = "Tollgate Billing GmbH"
    settings.SELLER_ADDRESS = "Hauptstraße 5\\n10115 Berlin\\nGermany"
    settings.SELLER_TAX_ID = "DE999999999"
    settings.SELLER_EMAIL = "billing@tollgate.example"
    return settings


def billing_set(organization: Organization, *, name: str = "", address: str = "", tax_id: str = "") -> None:
    owner = organization.memberships.get(role="owner").user
    account_services.organization_billing_update(
        organization=organization, billing_name=name, billing_address=address, tax_id=tax_id, actor=owner
    )


def text_of(payment) -> str:
    receipt = receipt_get(organization_id=payment.organization_id, payment_id=payment.pk)
    return pdf_text(receipt_pdf(receipt=receipt))


def squeezed(text: str) -> str:
    """The text without any whitespace: a long value may wrap anywhere."""
    return "".join(text.split())


def test_a_receipt_prints_the_parties_the_payment_and_its_number(organization, seller):
    billing_set(organization, name="Acme Widgets Ltd", address="1 Long Road\r\nSpringfield\n\nUSA  ", tax_id="US-12-3456789")
    settled_sandbox_payment(organization, "5.00")
    payment = settled_sandbox_payment(organization, "1234.50")

    text = text_of(payment)

    for expected in [
        "Receipt",
        "R-000002",
        f"#{payment.pk}",
        "Tollgate Billing GmbH",
        "Hauptstraße 5",
        "10115 Berlin",
        "Tax id: DE999999999",
        "billing@tollgate.example",
        "Acme Widgets Ltd",
        "1 Long Road",
        "Springfield",
        "Tax id: US-12-3456789",
        "Sandbox",
        payment.provider_reference,
        "USD",
        "$1,234.50",
    ]:
        assert expected in text, (expected, text)
    for absent in ["Refunded", "Net paid", "Exact"]:
        assert absent not in text, absent
    receipt = Receipt.objects.get(payment=payment)
    assert receipt_filename(receipt=receipt) == f"receipt-{organization.slug}-R-000002.pdf"


def test_without_billing_details_the_organization_name_is_printed(organization, settings):
    settings.SELLER_TAX_ID = ""
    payment = settled_sandbox_payment(organization, "7.00")

    text = text_of(payment)

    assert "Acme" in text and "$7.00" in text
    assert "Tax id" not in text


def test_a_receipt_keeps_the_billing_details_it_was_issued_with(organization, settings):
    """An issued receipt is a document: a later change of the billing details or of the seller never
    alters it; the next receipt carries the new ones."""
    billing_set(organization, name="First Holdings", tax_id="XY-1")
    payment = settled_sandbox_payment(organization, "7.00")
    billing_set(organization, name="Renamed Holdings", tax_id="XY-2")
    settings.SELLER_NAME = "Renamed Seller"

    text = text_of(payment)
    assert "First Holdings" in text and "Tax id: XY-1" in text
    assert "Renamed Holdings" not in text and "Renamed Seller" not in text
    later = text_of(settled_sandbox_payment(organization, "8.00"))
    assert "Renamed Holdings" in later and "Tax id: XY-2" in later and "Renamed Seller" in later


def test_refunds_are_listed_with_the_refunded_total_and_the_net_paid(organization, staff_user):
    payment = settled_sandbox_payment(organization, "25.00")
    first = refund(payment, "10.00", staff=staff_user)
    second = refund(payment, "5.50", staff=staff_user)
    # a refund the provider refused returned nothing: not on the receipt
    Refund.objects.create(
        organization=organization, payment=payment, amount=D("3.21"), status=RefundStatus.FAILED, reason="refused"
    )
    payment.refresh_from_db()
    assert payment.status == "partially_refunded"

    text = text_of(payment)

    net = Fraction("25.00") - Fraction("10.00") - Fraction("5.50")  # the oracle: 9.5
    assert net == Fraction(19, 2)
    for expected in ["$25.00", "−$10.00", "−$5.50", "Refunded", "−$15.50", "Net paid", "$9.50", first.provider_reference]:
        assert expected in text, (expected, text)
    assert second.provider_reference in text
    assert "3.21" not in text


def test_a_fully_refunded_payment_keeps_its_receipt(organization, staff_user):
    payment = settled_sandbox_payment(organization, "12.00")
    refund(payment, "12.00", staff=staff_user)
    payment.refresh_from_db()
    assert payment.status == "refunded"

    text = text_of(payment)

    assert "R-000001" in text and "Net paid" in text and "$0.00" in text and "−$12.00" in text


def test_digits_the_display_rounds_away_are_given_exactly(organization, staff_user):
    # Recharges start with at most the currency's decimals, but an amount recorded otherwise (before that
    # rule, or a refund staff typed to the last digit) may have more: the receipt must not hide them.
    payment = sandbox_payment(organization, "10.00")
    type(payment).objects.filter(pk=payment.pk).update(amount=D("10.005"))
    payment.refresh_from_db()
    payment = sandbox_notify(payment)
    refund(payment, "0.0025", staff=staff_user)

    text = text_of(payment)

    # half-even to cents for the eye: 10.005 → $10.00, 0.0025 → −$0.00, net 10.0025 → $10.00
    net = Fraction("10.005") - Fraction("0.0025")
    assert net == Fraction("10.0025")
    assert "$10.00" in text and "Exact" in text
    exact = squeezed(text)
    assert "10.005000000000USD" in exact
    assert "-0.002500000000USD" in exact  # money_str: the API's exact string
    assert "10.002500000000USD" in exact


def test_no_exact_note_when_the_display_shows_every_digit(organization, staff_user):
    payment = settled_sandbox_payment(organization, "10.00")
    refund(payment, "0.25", staff=staff_user)

    text = text_of(payment)

    assert "$9.75" in text and "Exact" not in text


@pytest.mark.parametrize(
    ("currency", "amount", "shown", "not_shown"),
    [
        ("JPY", "1500", "¥1,500", "¥1,500.0"),
        ("KWD", "12.345", "12.345 KWD", "12.3450"),
        ("EUR", "9.5", "€9.50", "€9.500"),
    ],
)
def test_the_currency_sets_the_decimals(settings, currency, amount, shown, not_shown):
    settings.CURRENCY = currency  # the wallet, and so its payments, take the currency they open with
    organization = organization_create(name=f"{currency} Co", owner=UserFactory())
    payment = settled_sandbox_payment(organization, amount)
    assert payment.currency == currency

    text = text_of(payment)

    assert shown in text, text
    assert not_shown not in text
    assert currency in text
    assert "Exact" not in text


@pytest.mark.parametrize(
    "name",
    ["Łódź Spółka z o.o.", "Ωmega Αναλυτική ΑΕ", "ООО «Ромашка» Москва"],
)
def test_unicode_names_print(organization, name):
    billing_set(organization, name=name, address="ul. Piotrkowska 1\n90-001 Łódź\nΑθήνα · Санкт-Петербург")
    payment = settled_sandbox_payment(organization, "3.00")

    text = text_of(payment)

    assert name in text
    assert "90-001 Łódź" in text and "Αθήνα · Санкт-Петербург" in text


def test_characters_the_font_lacks_do_not_break_the_receipt(organization):
    billing_set(organization, name="株式会社テスト 🚀", address="東京都")
    payment = settled_sandbox_payment(organization, "3.00")

    text = text_of(payment)

    assert "R-000001" in text and "$3.00" in text


def test_a_long_provider_reference_is_printed_whole(organization):
    payment = sandbox_payment(organization, "4.00")
    long_reference = "cs_live_" + "a1B2c3D4e5" * 12
    type(payment).objects.filter(pk=payment.pk).update(provider_reference=long_reference)
    payment = sandbox_notify(payment)
    assert payment.status == "succeeded"

    assert long_reference in squeezed(text_of(payment))
