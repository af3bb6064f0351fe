"""Shared by the statement money tests: an organization's own books (Fractions, added up as the test
acts, never read from the code) per UTC month, and the checks of issued statements against them and
against the ledger itself."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

from django.db.models import Sum

from metering.models import UsageRecord, VolumeTrueUp
from payments.models import Account, LedgerEntry, TransferKind
from statements.models import Statement
from tests.payments.credit_world import ModelGrant, burn

D = Decimal
F = Fraction


def frac(value: Decimal | str | int) -> Fraction:
    return Fraction(Decimal(value))


def month_of(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_month(start: datetime) -> datetime:
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


@dataclass
class Book:
    """What the test did to one organization's wallet, by month: each kind's total (usage by
    service), and its credit grants, to know what a debit draws and an expiry writes off."""

    organization_id: int
    months: dict[datetime, dict[tuple[str, int | None], Fraction]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Fraction))
    )
    grants: list[ModelGrant] = field(default_factory=list)
    # how many ledger transfers each figure sums
    transfers: dict[datetime, dict[tuple[str, int | None], int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )

    def moved(
        self, when: datetime, kind: str, amount: Fraction | Decimal | str, service_id: int | None = None, *, transfers: int = 1
    ) -> None:
        self.months[month_of(when)][(kind, service_id)] += F(amount) if isinstance(amount, Fraction) else frac(amount)
        self.transfers[month_of(when)][(kind, service_id)] += transfers

    def debit(self, when: datetime, kind: str, cost: Fraction | Decimal | str, service_id: int | None = None) -> None:
        """A usage or subscription debit: it draws from the live grants in burn order."""
        cost = cost if isinstance(cost, Fraction) else frac(cost)
        self.moved(when, kind, -cost, service_id)
        burn(self.grants, cost, when)

    def usage(self, when: datetime, costs: dict[int, Fraction]) -> None:
        """One usage transfer paying several services (a batch): one draw of its total."""
        for service_id, cost in costs.items():
            self.moved(when, TransferKind.USAGE, -cost, service_id)
        burn(self.grants, sum(costs.values(), F(0)), when)

    def granted(
        self, grant_id: int, when: datetime, amount: str, *, priority: int, expires_at: datetime | None, kind: str
    ) -> None:
        self.moved(when, kind, amount)
        self.grants.append(
            ModelGrant(
                id=grant_id, amount=frac(amount), remaining=frac(amount), priority=priority, expires_at=expires_at, seq=grant_id
            )
        )

    def expired(self, when: datetime) -> list[tuple[int, Fraction]]:
        """The grants a write-off at `when` finds expired with something left: (id, what it writes off)."""
        due = []
        for g in self.grants:
            if not g.written_off and g.expires_at is not None and g.expires_at <= when and g.remaining > 0:
                due.append((g.id, g.remaining))
                self.moved(when, TransferKind.EXPIRY, -g.remaining)
                g.remaining = F(0)
                g.written_off = True
        return due

    def lines(self, start: datetime) -> dict[tuple[str, int | None], Fraction]:
        return {key: amount for key, amount in self.months.get(start, {}).items() if amount or key[0] != TransferKind.USAGE}

    def net(self, start: datetime) -> Fraction:
        return sum(self.months.get(start, {}).values(), F(0))


def ledger_before(organization_id: int, moment: datetime) -> Decimal:
    """The wallet's ledger (its row's and its stripes' entries) summed before `moment`."""
    total = LedgerEntry.objects.filter(organization_id=organization_id, account=Account.WALLET, created_at__lt=moment).aggregate(
        s=Sum("amount")
    )["s"]
    return total or D(0)


def statement_lines(statement: Statement) -> dict[tuple[str, int | None], Fraction]:
    found: dict[tuple[str, int | None], Fraction] = {}
    for line in statement.lines.order_by("position"):
        key = (line.kind, line.service_id)
        assert key not in found, f"two lines for {key} on {statement}"
        found[key] = frac(line.amount)
    return found


def assert_statements_match(book: Book, statements: list[Statement], *, opening: Fraction | None = None) -> None:
    """Every statement (in month order, consecutive) against the book and the ledger: opening = the
    previous closing (the first: `opening`), each line = the book's figure for it exactly, opening + Σ
    lines = closing = Σ of the ledger before the month's end; an idle month has no lines."""
    expected_opening = opening or F(0)
    for previous, statement in zip([None, *statements], statements, strict=False):
        if previous is not None:
            assert statement.period_start == previous.period_end, "months must follow each other"
        start = statement.period_start
        assert statement.period_end == next_month(start)
        got = statement_lines(statement)
        want = book.lines(start)
        counts = {(line.kind, line.service_id): line.transfers for line in statement.lines.all()}
        assert counts == {key: book.transfers[start][key] for key in want}, f"{start:%Y-%m}: transfers"
        # Rebalance moves money between a wallet's own rows: nothing the customer did, and it nets to 0.
        assert (TransferKind.REBALANCE, None) not in got, f"{start:%Y-%m}: a rebalance line {got}"
        assert (TransferKind.USAGE, None) not in got, f"{start:%Y-%m}: usage no record names: {got}"
        assert got == want, f"{start:%Y-%m}: statement {got} != book {want}"
        assert frac(statement.opening_balance) == expected_opening, f"{start:%Y-%m} opening"
        closing = expected_opening + book.net(start)
        assert frac(statement.closing_balance) == closing, f"{start:%Y-%m} closing"
        assert frac(statement.opening_balance) + sum(statement_lines(statement).values(), F(0)) == closing
        assert frac(ledger_before(book.organization_id, statement.period_end)) == closing
        assert_usage_lines_are_the_records(statement, got)
        if not book.months.get(start):
            assert got == {} and statement.opening_balance == statement.closing_balance
        expected_opening = closing


def assert_usage_lines_are_the_records(statement: Statement, lines: dict[tuple[str, int | None], Fraction]) -> None:
    """Each service's usage line is minus the costs of its live usage records of the month plus its
    volume true-ups' credits posted in the month, exactly; the test key's records count nowhere."""
    by_service: dict[int, Fraction] = defaultdict(Fraction)
    records = UsageRecord.objects.filter(
        organization_id=statement.organization_id,
        test=False,
        created_at__gte=statement.period_start,
        created_at__lt=statement.period_end,
    )
    for service_id, cost in records.values_list("service_id", "cost"):
        by_service[service_id] -= frac(cost)
    true_ups = VolumeTrueUp.objects.filter(organization_id=statement.organization_id, transfer__isnull=False)
    for true_up in true_ups:
        for amount in LedgerEntry.objects.filter(
            transfer_id=true_up.transfer_id,
            account=Account.WALLET,
            created_at__gte=statement.period_start,
            created_at__lt=statement.period_end,
        ).values_list("amount", flat=True):
            by_service[true_up.service_id] += frac(amount)
    usage = {service_id: amount for (kind, service_id), amount in lines.items() if kind == TransferKind.USAGE}
    assert usage == {service_id: amount for service_id, amount in by_service.items() if amount}
