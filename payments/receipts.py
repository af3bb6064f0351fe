"""Receipts (docs/statements.md): one per credited payment, numbered by the database as the payment is
credited (payments/document_models.py). The parties (the organization's billing details, the seller)
are stored on the receipt as it is issued, so a later change of either never alters it; the payment
and the refunds that succeeded so far are read when it is rendered."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.db.models import QuerySet
from django.http import HttpResponse

from accounts.models import Organization
from billing_site.csv_stream import attachment_disposition
from billing_site.money import EXACT, ZERO, currency_exponent, money_display, money_str
from billing_site.pdf import Document, Party, billed_to_party, document_date, party_loaded, party_stored, seller
from payments.models import Payment, Receipt, Refund, RefundStatus

RECEIPT_NUMBER_DIGITS = 6


def receipt_get(*, organization_id: int, payment_id: int) -> Receipt:
    """The receipt of the organization's payment, with its payment and organization. Raises
    Receipt.DoesNotExist for another organization's payment and for one not credited (pending,
    failed, canceled)."""
    return Receipt.objects.select_related("payment", "organization").get(organization_id=organization_id, payment_id=payment_id)


def receipt_find(*, organization_id: int, payment_id: int) -> Receipt | None:
    """The receipt of the organization's payment, or None (not credited, or not the organization's)."""
    return Receipt.objects.filter(organization_id=organization_id, payment_id=payment_id).first()


def receipt_get_for_staff(*, payment_id: int) -> Receipt:
    """The receipt of any organization's payment (the back office). Raises Receipt.DoesNotExist."""
    return Receipt.objects.select_related("payment", "organization").get(payment_id=payment_id)


def receipt_list(*, organization_id: int) -> QuerySet[Receipt]:
    """The organization's receipts, newest number first."""
    return Receipt.objects.filter(organization_id=organization_id).select_related("payment").order_by("-number")


def receipt_refunds(*, payment_id: int) -> list[Refund]:
    """The payment's succeeded refunds, in the order they returned the money: what the receipt lists
    (a pending or refused refund returned nothing)."""
    return list(
        Refund.objects.filter(payment_id=payment_id, status=RefundStatus.SUCCEEDED)
        .select_related("transfer")
        .order_by("transfer__created_at", "id")
    )


def refund_date(refund: Refund) -> datetime:
    """When a succeeded refund returned the money: its ledger transfer's time, the date the statement
    lists it under (a refund may stay pending for days after it was asked for)."""
    return refund.transfer.created_at if refund.transfer is not None else refund.created_at


def receipt_number_display(number: int) -> str:
    """`R-000042`: the number as documents and file names print it."""
    return f"R-{number:0{RECEIPT_NUMBER_DIGITS}d}"


def receipt_filename(*, receipt: Receipt) -> str:
    """`receipt-<organization slug>-R-000042.pdf`."""
    return f"receipt-{receipt.organization.slug}-{receipt_number_display(receipt.number)}.pdf"


def receipt_download(*, receipt: Receipt) -> HttpResponse:
    """The receipt's PDF as an attachment (`receipt-<org slug>-R-000042.pdf`), never cached: what the
    API, the dashboard and the back office answer."""
    response = HttpResponse(receipt_pdf(receipt=receipt), content_type="application/pdf")
    response["Content-Disposition"] = attachment_disposition(receipt_filename(receipt=receipt))
    response["Cache-Control"] = "private, no-store"
    return response


def billed_to(organization: Organization) -> Party:
    """The organization as documents print it now (documents store it when issued: `document_parties`)."""
    return billed_to_party(
        name=organization.name,
        billing_name=organization.billing_name,
        billing_address=organization.billing_address,
        tax_id=organization.tax_id,
    )


def document_parties(organization: Organization) -> dict[str, dict[str, object]]:
    """`billed_to` and `seller` as a receipt or statement stores them when it is issued."""
    return {"billed_to": party_stored(billed_to(organization)), "seller": party_stored(seller())}


@dataclass(frozen=True)
class ReceiptFigures:
    """A receipt's amounts, exact; `refunds` are the succeeded ones."""

    amount: Decimal
    currency: str
    refunds: list[Refund]
    refunded: Decimal
    net: Decimal


def receipt_figures(*, receipt: Receipt) -> ReceiptFigures:
    payment = receipt.payment
    refunds = receipt_refunds(payment_id=payment.pk)
    refunded = sum((refund.amount for refund in refunds), ZERO)
    return ReceiptFigures(
        amount=payment.amount,
        currency=payment.currency,
        refunds=refunds,
        refunded=refunded,
        net=payment.amount - refunded,
    )


def _hidden_digits(amount: Decimal, currency: str) -> bool:
    """Whether the display, rounded to the currency's usual decimals, hides digits of `amount`."""
    return amount != amount.quantize(Decimal(1).scaleb(-currency_exponent(currency)), context=EXACT)


def receipt_pdf(*, receipt: Receipt) -> bytes:
    """The receipt as a PDF: the seller, the customer's billing details, the payment (amount in its
    currency, provider, provider reference, when it was paid) and, when any succeeded, the refunds,
    what they total and the net paid. Amounts display with the currency's usual decimals; when that
    hides digits, a note gives the exact figures."""
    payment: Payment = receipt.payment
    figures = receipt_figures(receipt=receipt)
    currency = figures.currency
    number = receipt_number_display(receipt.number)

    doc = Document(
        title=f"Receipt {number}", subject=f"Receipt {number} for payment #{payment.pk}", issuer=party_loaded(receipt.seller)
    )
    doc.heading(
        "Receipt",
        facts=[("Receipt no.", number), ("Date issued", document_date(receipt.issued_at)), ("Payment", f"#{payment.pk}")],
    )
    customer = party_loaded(receipt.billed_to)
    doc.parties(("From", doc.issuer), ("Billed to", customer))

    doc.section("Payment")
    paid_at = payment.settled_at or receipt.issued_at
    doc.details(
        [
            ("Provider", payment.provider.title()),
            ("Provider reference", payment.provider_reference or "—"),
            ("Paid at", f"{document_date(paid_at)}, {paid_at.astimezone(UTC):%H:%M} UTC"),
            ("Currency", currency),
        ]
    )
    doc.amounts([], total=("Amount paid", money_display(figures.amount, currency)))

    exact = [("Amount paid", figures.amount)]
    if figures.refunds:
        doc.section("Refunds")
        doc.columns(
            ["Date", "Reference", "Amount"],
            [
                [document_date(refund_date(refund)), refund.provider_reference or "—", money_display(-refund.amount, currency)]
                for refund in figures.refunds
            ],
            widths=[0.3, 0.45, 0.25],
            right=[False, False, True],
        )
        doc.ln(2)
        doc.amounts(
            [("Refunded", money_display(-figures.refunded, currency))],
            total=("Net paid", money_display(figures.net, currency)),
        )
        exact += [(f"refund of {document_date(refund_date(r))}", -r.amount) for r in figures.refunds]
        exact += [("Refunded", -figures.refunded), ("Net paid", figures.net)]

    hidden = [(label, amount) for label, amount in exact if _hidden_digits(amount, currency)]
    if hidden:
        doc.paragraph(
            "Amounts are shown rounded to the currency's usual decimals. Exact: "
            + "; ".join(f"{label}: {money_str(amount)} {currency}" for label, amount in hidden)
            + ".",
            muted=True,
        )
    doc.paragraph(
        f"Payment #{payment.pk} credited your prepaid balance with "
        f"{money_display(figures.amount, currency)}. Keep this receipt for your records.",
        muted=True,
    )
    doc.footer_set(f"Receipt {number} · {customer.name}")
    return bytes(doc)
