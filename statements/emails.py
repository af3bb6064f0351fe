"""The issued statement, emailed to the organization's owners with its PDF and CSV (docs/statements.md)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import Membership, Role
from billing_site.money import money_display
from billing_site.pdf import party_loaded
from statements import render
from statements.models import Statement
from statements.selectors import statement_document_get, statement_number_display, statement_period_display

logger = logging.getLogger(__name__)
# The claimed row stays locked while the mail server answers: never for longer than this.
SEND_TIMEOUT_SECONDS = 30


def statement_recipients(*, organization_id: int) -> list[str]:
    """The emails of the organization's active owners (admins and members get no statement email)."""
    return list(
        Membership.objects.filter(organization_id=organization_id, role=Role.OWNER, user__is_active=True)
        .order_by("user__email")
        .values_list("user__email", flat=True)
    )


def statement_email_message(*, statement: Statement, recipients: list[str]) -> EmailMessage:
    number, period, currency = statement_number_display(statement), statement_period_display(statement), statement.currency
    organization = statement.organization
    issuer = party_loaded(statement.seller).name or settings.SELLER_NAME
    link = settings.SITE_URL.rstrip("/") + reverse("dashboard:statements")
    body = "\n".join(
        [
            f"Your {issuer} statement {number} for {period} ({organization.name}) is attached, as a PDF and as a CSV.",
            "",
            f"Opening balance: {money_display(statement.opening_balance, currency)}",
            f"Closing balance: {money_display(statement.closing_balance, currency)}",
            "",
            f"All your statements: {link}",
            "",
            "Amounts here and in the PDF are rounded to the currency's usual decimals; the CSV carries the exact figures.",
        ]
    )
    message = EmailMessage(
        subject=f"Your {issuer} statement for {period} ({number})",
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
        connection=get_connection(timeout=getattr(settings, "EMAIL_TIMEOUT", None) or SEND_TIMEOUT_SECONDS),
    )
    message.attach(render.statement_filename(statement, "pdf"), render.statement_pdf(statement=statement), "application/pdf")
    message.attach(render.statement_filename(statement, "csv"), render.statement_csv(statement=statement), "text/csv")
    return message


def statement_email_send(*, statement_id: int) -> bool:
    """Email the statement to the organization's owners once; answers whether this call sent it.

    The claim (emailed_at set where it is still empty) and the sending share one transaction: a send
    that fails rolls the claim back, so a retry sends it (no statement is lost), and a concurrent or
    repeated task waits on the claimed row, then finds it claimed and sends nothing. Only a crash
    between the mail server accepting the message and our commit can send it twice; a duplicate
    statement email is harmless, a missing one is not, so this side of the trade is the one taken."""
    statement = statement_document_get(statement_id=statement_id)
    if statement is None or statement.emailed_at is not None:
        return False
    recipients = statement_recipients(organization_id=statement.organization_id)
    if not recipients:
        logger.warning("statement %s: organization %s has no owner to email", statement_id, statement.organization_id)
        return False
    message = statement_email_message(statement=statement, recipients=recipients)
    with transaction.atomic():
        claimed = Statement.objects.filter(pk=statement_id, emailed_at__isnull=True).update(emailed_at=timezone.now())
        if not claimed:
            return False
        message.send()
    logger.info("statement %s emailed to %d owner(s)", statement_id, len(recipients))
    return True
