"""Helpers for the receipt tests: a PDF's text read back with pypdf (independently of how it was written)."""

from __future__ import annotations

import io

from pypdf import PdfReader

from accounts.models import Organization
from payments.models import Payment, Receipt

RECEIPT_NUMBER = "R-{:06d}"


def pdf_text(data: bytes) -> str:
    """Every page's extracted text, joined; fails unless `data` is a PDF."""
    assert data.startswith(b"%PDF-"), data[:20]
    reader = PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


def receipt_url(payment: Payment | int) -> str:
    return f"/api/v1/payments/{payment if isinstance(payment, int) else payment.pk}/receipt/"


def receipt_numbers(organization: Organization) -> list[tuple[int, int]]:
    """(payment id, number) of the organization's receipts, by number."""
    return list(Receipt.objects.filter(organization=organization).order_by("number").values_list("payment_id", "number"))
