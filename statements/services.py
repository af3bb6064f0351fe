"""Issuing statements (docs/statements.md): once per organization and closed UTC month, in order,
numbered by the database, emailed to the owners after commit."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from accounts.models import Organization
from billing_site import locks, metrics
from billing_site.money import ZERO
from payments import receipts
from payments.models import DocumentKind, Wallet
from statements.models import Statement, StatementLine
from statements.selectors import statement_figures

logger = logging.getLogger(__name__)


class StatementFiguresMoved(RuntimeError):
    """A month's figures did not add up (opening + lines ≠ closing): nothing was issued."""


# Sent after the commit of each issued statement, with `statement_id`: the email goes out.
statement_issued_signal = Signal()


def month_start(moment: datetime) -> datetime:
    """The first instant (UTC) of the calendar month `moment` falls in."""
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_after(start: datetime) -> datetime:
    return (start + timedelta(days=32)).replace(day=1)


def statement_issue_delay() -> timedelta:
    """How long after a month ends its statement waits: longer than any transaction that may still
    commit an entry dated in that month (settings.STATEMENT_ISSUE_DELAY_SECONDS)."""
    return timedelta(seconds=settings.STATEMENT_ISSUE_DELAY_SECONDS)


def statement_issue_next(*, organization_id: int, now: datetime | None = None) -> Statement | None:
    """Issue the organization's next statement if its month has closed (ended at least the issue
    delay before `now`): the month after its last statement, or the month it was created in. Answers
    it, or None when no month is due. Safe to run twice or at once: the organization's counter lock
    serializes issuers, and one statement per month is a unique constraint."""
    now = now or timezone.now()
    with transaction.atomic(durable=True):
        locks.document_counter_lock(organization_id=organization_id, kind=DocumentKind.STATEMENT)
        last = Statement.objects.filter(organization_id=organization_id).order_by("-period_start").first()
        if last is not None:
            start = last.period_end
        else:
            start = month_start(Organization.objects.values_list("created_at", flat=True).get(pk=organization_id))
        end = month_after(start)
        if end + statement_issue_delay() > now:
            return None
        figures = statement_figures(organization_id=organization_id, start=start, end=end)
        if figures.opening_balance + sum((line.amount for line in figures.lines), ZERO) != figures.closing_balance:
            # Never expected (the figures are one snapshot, the lines a partition of the month's entries):
            # a statement that does not add up is not issued, and the task's error says so.
            raise StatementFiguresMoved(f"organization {organization_id}, {start:%Y-%m}")
        if last is not None and figures.opening_balance != last.closing_balance:
            # The new statement still says what the ledger says; the earlier one missed an entry
            # dated in its month that committed after it was issued (STATEMENT_ISSUE_DELAY_SECONDS too short).
            metrics.STATEMENT_CHAIN_BREAKS.inc()
            logger.error(
                "statement chain broken: organization %s opens %s at %s, its statement %s closed at %s",
                organization_id,
                f"{start:%Y-%m}",
                figures.opening_balance,
                last.number,
                last.closing_balance,
            )
        organization = Organization.objects.get(pk=organization_id)
        statement = Statement.objects.create(
            organization_id=organization_id,
            period_start=start,
            period_end=end,
            currency=Wallet.objects.values_list("currency", flat=True).get(organization_id=organization_id),
            opening_balance=figures.opening_balance,
            closing_balance=figures.closing_balance,
            issued_at=now,
            **receipts.document_parties(organization),
        )
        StatementLine.objects.bulk_create(
            StatementLine(
                statement=statement,
                position=position,
                kind=line.kind,
                service_id=line.service_id,
                amount=line.amount,
                transfers=line.transfers,
            )
            for position, line in enumerate(figures.lines, start=1)
        )
        transaction.on_commit(lambda: statement_issued_signal.send(sender=Statement, statement_id=statement.pk))
    metrics.STATEMENTS_ISSUED.inc()
    return statement


def statements_issue_for_organization(*, organization_id: int, now: datetime | None = None) -> list[Statement]:
    """Every closed month of the organization not yet issued, oldest first."""
    issued = []
    while (statement := statement_issue_next(organization_id=organization_id, now=now)) is not None:
        issued.append(statement)
    return issued


def organizations_due(*, now: datetime | None = None) -> list[int]:
    """Organizations with a closed month not yet issued: created before it ended, no statement for it."""
    now = now or timezone.now()
    end = month_start(now - statement_issue_delay())
    start = month_start(end - timedelta(days=1))
    return list(
        Organization.objects.filter(created_at__lt=end)
        .exclude(statements__period_start=start)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
