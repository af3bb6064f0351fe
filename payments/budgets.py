"""Budgets: an organization's (or one API key's) spend limit per UTC calendar day, week or month
(docs/credits.md, "Budgets"). These services create, change and delete them; the ledger's usage
statements add to their spend and refuse what a hard budget does not allow.

A period starts where PostgreSQL's `date_trunc(period, at, 'UTC')` says (the ledger's statements use
that): `budget_period_start` is the same rule in Python, and a test holds the two together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Case, DateTimeField, DecimalField, OuterRef, QuerySet, Subquery, Value, When
from django.utils import timezone

from accounts.models import ApiKey, ApiKeyMode
from billing_site.errors import InvalidRequest, NotFound
from billing_site.money import MONEY_DIGITS, MONEY_PLACES, ZERO, money_amount_error
from payments.models import Budget, BudgetMode, BudgetPeriod, BudgetSpend

BUDGET_CHANGEABLE = frozenset({"amount", "mode"})


def budget_period_start(period: str, at: datetime) -> datetime:
    """The start of the UTC calendar `period` (day, ISO week from Monday, month) that holds `at`."""
    day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == BudgetPeriod.DAY:
        return day
    if period == BudgetPeriod.WEEK:
        return day - timedelta(days=day.weekday())
    if period == BudgetPeriod.MONTH:
        return day.replace(day=1)
    raise ValueError(f"not a budget period: {period!r}")


def budget_period_end(period: str, at: datetime) -> datetime:
    """The start of the next period: when a budget's spend resets."""
    start = budget_period_start(period, at)
    if period == BudgetPeriod.DAY:
        return start + timedelta(days=1)
    if period == BudgetPeriod.WEEK:
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


def budget_alert_level(*, spent: Decimal, amount: Decimal) -> int:
    """How many of the 50/80/100 % alert levels `spent` has reached (the ledger's BUDGET_LEVEL in Python)."""
    if spent >= amount:
        return 3
    if spent * 100 >= amount * 80:
        return 2
    if spent * 100 >= amount * 50:
        return 1
    return 0


# --- Services -------------------------------------------------------------------------------------


def _validate(*, amount: object, period: object, mode: object) -> dict[str, str]:
    errors: dict[str, str] = {}
    if (amount_error := money_amount_error(amount)) is not None:
        errors["amount"] = amount_error
    if period not in BudgetPeriod.values:
        errors["period"] = f"One of {', '.join(BudgetPeriod.values)}."
    if mode not in BudgetMode.values:
        errors["mode"] = f"One of {', '.join(BudgetMode.values)}."
    return errors


def _api_key_error(*, organization_id: int, api_key_id: object, now: datetime) -> str | None:
    if isinstance(api_key_id, bool) or not isinstance(api_key_id, int):
        return "The id of one of your API keys."
    key = ApiKey.objects.filter(pk=api_key_id, organization_id=organization_id).first()
    if key is None:
        return "No such API key."
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        return "This API key is revoked or expired."
    if key.mode != ApiKeyMode.LIVE:
        return "A test key never spends money: budgets are for live keys."
    return None


def budget_create_errors(
    *, organization_id: int, api_key_id: object, period: object, amount: object, mode: object
) -> dict[str, str]:
    """What is wrong with these budget terms, by field (empty when nothing is); the one budget per scope
    and period is left to the database's constraint, which budget_create reports under `period`."""
    errors = _validate(amount=amount, period=period, mode=mode)
    if api_key_id is not None and (
        key_error := _api_key_error(organization_id=organization_id, api_key_id=api_key_id, now=timezone.now())
    ):
        errors["api_key"] = key_error
    return errors


def budget_create(
    *, organization_id: int, api_key_id: int | None, period: str, amount: Decimal, mode: str = BudgetMode.HARD
) -> Budget:
    """A budget on the organization (`api_key_id` None) or one of its live keys. InvalidRequest, each
    error under its field, for a bad amount, period or mode, a key that is not the organization's live
    key, or a scope that already has a budget for this period (one per scope and period)."""
    errors = budget_create_errors(organization_id=organization_id, api_key_id=api_key_id, period=period, amount=amount, mode=mode)
    if errors:
        raise InvalidRequest("The budget is not valid.", details=errors)
    try:
        with transaction.atomic():
            return Budget.objects.create(
                organization_id=organization_id, api_key_id=api_key_id, period=period, amount=amount, mode=mode
            )
    except IntegrityError as exc:  # the unique constraint, also against a concurrent create
        scope = "This API key" if api_key_id is not None else "The organization"
        raise InvalidRequest(
            "The budget is not valid.", details={"period": f"{scope} already has a {period} budget: change that one."}
        ) from exc


def budget_update(*, budget: Budget, now: datetime | None = None, **changes: Any) -> Budget:
    """Change a budget's `amount` and/or `mode` (its scope and period are what it is: delete it and
    create another). The current period's spend row takes the new limit at once, so the next debit is
    checked against it; its alerts re-arm for the levels the new amount puts it below."""
    unknown = sorted(set(changes) - BUDGET_CHANGEABLE)
    if unknown:
        raise InvalidRequest(
            "The budget is not valid.",
            details=dict.fromkeys(unknown, "A budget's scope and period cannot change: delete it and create another."),
        )
    amount, mode = changes.get("amount", budget.amount), changes.get("mode", budget.mode)
    errors = _validate(amount=amount, period=budget.period, mode=mode)
    if errors:
        raise InvalidRequest("The budget is not valid.", details=errors)
    period_start = budget_period_start(budget.period, now or timezone.now())
    ceiling = amount if mode == BudgetMode.HARD else None
    with transaction.atomic():
        # The spend row first, in the lock order (budget spends before anything else of the organization).
        spend = (
            BudgetSpend.objects.select_for_update()
            .filter(organization_id=budget.organization_id, budget_id=budget.pk, period_start=period_start)
            .first()
        )
        if spend is not None:
            spend.amount, spend.ceiling = amount, ceiling
            spend.alerted = min(spend.alerted, budget_alert_level(spent=spend.spent, amount=amount))
            spend.save(update_fields=["amount", "ceiling", "alerted"])
        updated = Budget.objects.filter(pk=budget.pk).update(amount=amount, mode=mode, updated_at=timezone.now())
        if not updated:
            raise NotFound("No such budget.")
    budget.refresh_from_db()
    return budget


def budget_delete(*, budget: Budget) -> None:
    """Delete a budget and its spend history: debits are no longer limited or counted by it."""
    with transaction.atomic():
        # The budget first: usage statements hold it FOR KEY SHARE before its spend rows
        # (billing_site/locks.py), so taking the spend rows first could deadlock with one.
        if not Budget.objects.select_for_update().filter(pk=budget.pk).exists():
            return
        BudgetSpend.objects.filter(budget_id=budget.pk).delete()
        Budget.objects.filter(pk=budget.pk).delete()


# --- Selectors ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    budget: Budget
    spent: Decimal  # in the current period (0 before its first debit)
    period_start: datetime
    resets_at: datetime

    @property
    def percent(self) -> int:
        """Spent as a whole percentage of the amount, for progress bars (capped at 100)."""
        return min(100, int(self.spent * 100 / self.budget.amount)) if self.budget.amount > ZERO else 100


def budget_queryset(*, organization_id: int) -> QuerySet[Budget]:
    return Budget.objects.filter(organization_id=organization_id).select_related("api_key").order_by("api_key_id", "period", "id")


def budget_get(*, organization_id: int, budget_id: int) -> Budget:
    """One of the organization's budgets; NotFound for any other (another tenant's included)."""
    budget = budget_queryset(organization_id=organization_id).filter(pk=budget_id).first()
    if budget is None:
        raise NotFound("No such budget.")
    return budget


def budget_statuses(budgets: QuerySet[Budget] | list[Budget], *, now: datetime | None = None) -> list[BudgetStatus]:
    """Each budget with what its scope spent in the current period and when that resets, in one query."""
    now = now or timezone.now()
    starts = {period: budget_period_start(period, now) for period in BudgetPeriod.values}
    if isinstance(budgets, QuerySet):
        current_start = Case(*(When(period=p, then=Value(s)) for p, s in starts.items()), output_field=DateTimeField())
        spent = BudgetSpend.objects.filter(budget_id=OuterRef("pk"), period_start=OuterRef("current_start")).values("spent")[:1]
        budgets = list(
            budgets.annotate(current_start=current_start).annotate(
                current_spent=Subquery(spent, output_field=DecimalField(max_digits=MONEY_DIGITS, decimal_places=MONEY_PLACES))
            )
        )
    else:
        rows = BudgetSpend.objects.filter(
            budget_id__in=[b.pk for b in budgets], period_start__in=set(starts.values())
        ).values_list("budget_id", "period_start", "spent")
        found = {(budget_id, start): spent for budget_id, start, spent in rows}
        for budget in budgets:
            budget.current_spent = found.get((budget.pk, starts[budget.period]))  # type: ignore[attr-defined]
    return [
        BudgetStatus(
            budget=budget,
            spent=getattr(budget, "current_spent", None) or ZERO,
            period_start=starts[budget.period],
            resets_at=budget_period_end(budget.period, now),
        )
        for budget in budgets
    ]


def budget_list(*, organization_id: int, now: datetime | None = None) -> list[BudgetStatus]:
    return budget_statuses(budget_queryset(organization_id=organization_id), now=now)


def budget_status(*, budget: Budget, now: datetime | None = None) -> BudgetStatus:
    [status] = budget_statuses([budget], now=now)
    return status
