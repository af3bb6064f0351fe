"""Plans and subscriptions (docs/pricing.md, "Plans"): choosing a plan, upgrades, downgrades and
cancellations, the fee of each period (the beat task's renewal) and the collection of a fee left unpaid.

Lock order (billing_site/locks.py): the subscription row first, then the usage positions its included
quantities are granted on, then the wallet (the ledger's posting). Each change, renewal or collection
is ONE transaction: a worker killed midway leaves nothing of it behind, and the next run does it whole.
Every write of a Subscription goes through `.save()`, so the price cache (metering/apps.py) hears of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import MANAGER_ROLES, Membership
from billing_site import locks
from billing_site.errors import NotFound
from billing_site.money import ZERO, money_round_fraction, money_str
from metering.models import Plan, PlanAllowance, Subscription, SubscriptionCharge, SubscriptionChargeKind, SubscriptionStatus
from metering.services.positions import period_bounds, period_of, position_grant, position_reduce
from payments import ledger

logger = logging.getLogger(__name__)
SECOND = timedelta(seconds=1)


class PlanNotFound(NotFound):
    message = "No such plan."


class SubscriptionNotFound(NotFound):
    message = "Your organization has no subscription."


class SubscriptionPastDue(ledger.InsufficientBalance):
    message = "This month's fee of your plan is unpaid: recharge your balance first."


# --- Proration ------------------------------------------------------------------------------------------------


def fraction_left(moment: datetime) -> Fraction:
    """The part of the moment's month still to come: seconds left / seconds in the month, counted from
    the start of the moment's second (exact)."""
    start, end = period_bounds(period_of(moment))
    whole = moment.astimezone(UTC).replace(microsecond=0)
    return Fraction((end - whole) // SECOND, (end - start) // SECOND)


def prorated_money(amount: Decimal, fraction: Fraction) -> Decimal:
    """amount × fraction, rounded once half-even to the stored scale (computed exactly)."""
    return money_round_fraction(Fraction(amount) * fraction)


def prorated_units(quantity: int, fraction: Fraction) -> int:
    """quantity × fraction, rounded once half-even to a whole unit."""
    return round(quantity * fraction)


# --- Choosing a plan ----------------------------------------------------------------------------------------


class ChangeOutcome(StrEnum):
    SUBSCRIBED = "subscribed"
    UPGRADED = "upgraded"
    DOWNGRADE_SCHEDULED = "downgrade_scheduled"
    SCHEDULE_UNDONE = "schedule_undone"
    CANCEL_SCHEDULED = "cancel_scheduled"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    subscription: Subscription
    outcome: ChangeOutcome


class _FirstSubscriptionRaced(Exception):
    """Another request created the organization's subscription first (the unique index said so)."""


def subscription_choose(*, organization_id: int, plan_slug: str, now: datetime | None = None) -> SubscriptionChange:
    """Put the organization on the plan `plan_slug` (a public plan, or its current one):
    - no subscription: subscribe, paying the fee pro rata for the rest of the month (`start_fee`) and
      getting the included quantities pro rata;
    - a plan with a higher monthly fee: upgrade at once (`upgrade_credit` of the old fee's unused part,
      `upgrade_fee` of the new one for the rest of the month, the new plan's included quantities pro rata);
    - a lower or equal fee: the plan of the next period (a downgrade);
    - the current plan: undo a scheduled downgrade or cancellation.
    PlanNotFound; InsufficientBalance (402) when the wallet cannot pay, and then nothing changed;
    SubscriptionPastDue (402) for an upgrade while this month's fee is unpaid."""
    now = now or timezone.now()
    try:
        with transaction.atomic(durable=True):
            return _choose(organization_id=organization_id, plan_slug=plan_slug, now=now)
    except _FirstSubscriptionRaced:
        # Two first subscriptions raced and the other one won: this one is now a change of it.
        with transaction.atomic(durable=True):
            return _choose(organization_id=organization_id, plan_slug=plan_slug, now=now)


def _choose(*, organization_id: int, plan_slug: str, now: datetime) -> SubscriptionChange:
    subscription = _open_locked(organization_id=organization_id, now=now)
    current_plan = Q(pk=subscription.plan_id) if subscription is not None else Q(pk__in=[])
    plan = Plan.objects.filter(Q(public=True) | current_plan, slug=plan_slug).first() if isinstance(plan_slug, str) else None
    if plan is None:
        raise PlanNotFound()
    if subscription is None:
        return SubscriptionChange(_subscribe(organization_id=organization_id, plan=plan, now=now), ChangeOutcome.SUBSCRIBED)
    if plan.pk == subscription.plan_id:
        if subscription.next_plan_id is None and not subscription.cancel_at_period_end:
            return SubscriptionChange(subscription, ChangeOutcome.UNCHANGED)
        subscription.next_plan = None
        subscription.cancel_at_period_end = False
        subscription.save(update_fields=["next_plan", "cancel_at_period_end"])
        return SubscriptionChange(subscription, ChangeOutcome.SCHEDULE_UNDONE)
    if plan.monthly_fee > subscription.plan.monthly_fee:
        _upgrade(subscription, plan=plan, now=now)
        return SubscriptionChange(subscription, ChangeOutcome.UPGRADED)
    subscription.next_plan = plan
    subscription.cancel_at_period_end = False
    subscription.save(update_fields=["next_plan", "cancel_at_period_end"])
    return SubscriptionChange(subscription, ChangeOutcome.DOWNGRADE_SCHEDULED)


def subscription_cancel(*, organization_id: int, now: datetime | None = None) -> SubscriptionChange:
    """Cancel the organization's subscription at the end of its period (a scheduled downgrade is
    dropped). SubscriptionNotFound when it has none."""
    now = now or timezone.now()
    with transaction.atomic(durable=True):
        subscription = _open_locked(organization_id=organization_id, now=now)
        if subscription is None:
            raise SubscriptionNotFound()
        subscription.cancel_at_period_end = True
        subscription.next_plan = None
        subscription.save(update_fields=["cancel_at_period_end", "next_plan"])
    return SubscriptionChange(subscription, ChangeOutcome.CANCEL_SCHEDULED)


def _open_locked(*, organization_id: int, now: datetime) -> Subscription | None:
    """Lock the organization's open subscription, renewed first if its period has ended (as the beat
    task would have); None when it has none, or the renewal ended it."""
    subscription: Subscription | None = locks.subscription_open_lock(organization_id=organization_id)
    if subscription is not None:
        _renew(subscription, now=now)
        if subscription.status == SubscriptionStatus.CANCELED:
            return None
    return subscription


def _subscribe(*, organization_id: int, plan: Plan, now: datetime) -> Subscription:
    period, fraction = period_of(now), fraction_left(now)
    try:
        with transaction.atomic():
            subscription = Subscription.objects.create(
                organization_id=organization_id, plan=plan, status=SubscriptionStatus.ACTIVE, period=period, created_at=now
            )
    except IntegrityError as error:
        raise _FirstSubscriptionRaced() from error
    _grant(subscription, plan=plan, fraction=fraction)
    _charge(subscription, plan=plan, kind=SubscriptionChargeKind.START_FEE, amount=prorated_money(plan.monthly_fee, fraction))
    return subscription


def _upgrade(subscription: Subscription, *, plan: Plan, now: datetime) -> None:
    if subscription.status != SubscriptionStatus.ACTIVE:
        raise SubscriptionPastDue()
    old, fraction = subscription.plan, fraction_left(now)
    # The old plan's rest of the month is refunded, so its included units for it go too (the used ones
    # stay used); then the new plan's pro rata. Positions before the wallet.
    _grant(subscription, plan=old, fraction=fraction, take_back=True)
    _grant(subscription, plan=plan, fraction=fraction)
    # The credit is what the old plan was charged at this period (staff may have changed its fee since),
    # and posts first, so the fee's overdraft check sees it: the wallet must pay the difference.
    paid = _paid_charge(subscription, old)
    _charge(
        subscription,
        plan=old,
        kind=SubscriptionChargeKind.UPGRADE_CREDIT,
        amount=-prorated_money(ZERO if paid is None else paid.monthly_fee, fraction),
        reverses_transfer_id=None if paid is None else paid.transfer_id,
    )
    _charge(subscription, plan=plan, kind=SubscriptionChargeKind.UPGRADE_FEE, amount=prorated_money(plan.monthly_fee, fraction))
    subscription.plan = plan
    subscription.next_plan = None
    subscription.cancel_at_period_end = False
    subscription.save(update_fields=["plan", "next_plan", "cancel_at_period_end"])


def _grant(subscription: Subscription, *, plan: Plan, fraction: Fraction, take_back: bool = False) -> None:
    """Make the plan's included quantities × fraction free for the rest of the subscription's period (or,
    `take_back`, no longer free, as far as they are left)."""
    for allowance in PlanAllowance.objects.filter(plan=plan, quantity__gt=0).order_by("service_id"):
        units = prorated_units(allowance.quantity, fraction)
        if units:
            (position_reduce if take_back else position_grant)(
                organization_id=subscription.organization_id,
                service_id=allowance.service_id,
                period=subscription.period,
                units=units,
            )


_FEE_KINDS = (SubscriptionChargeKind.PERIOD_FEE, SubscriptionChargeKind.START_FEE, SubscriptionChargeKind.UPGRADE_FEE)


def _paid_charge(subscription: Subscription, plan: Plan) -> SubscriptionCharge | None:
    """The charge of the plan's monthly fee this period (None: it was not charged); its `monthly_fee` is
    the rate it was charged at (staff may have changed the plan's fee since)."""
    return (
        SubscriptionCharge.objects.filter(subscription=subscription, period=subscription.period, plan=plan, kind__in=_FEE_KINDS)
        .order_by("-id")
        .first()
    )


def _charge(
    subscription: Subscription,
    *,
    plan: Plan,
    kind: SubscriptionChargeKind,
    amount: Decimal,
    reverses_transfer_id: int | None = None,
) -> SubscriptionCharge:
    """Post the fee (or, negative, the credit of the fee charged by `reverses_transfer_id`) through the
    ledger and record it; the record's unique key (subscription, period, kind, plan) makes it once."""
    transfer_id = None
    if amount != ZERO:
        posting = ledger.subscription_charge(
            organization_id=subscription.organization_id,
            amount=amount,
            reference=f"subscription:{subscription.pk}",
            memo=f"{plan.name}: {SubscriptionChargeKind(kind).label}, {subscription.period:%Y-%m}",
            reverses_transfer_id=reverses_transfer_id,
        )
        transfer_id = posting.transfer_id
    return SubscriptionCharge.objects.create(
        subscription=subscription,
        organization_id=subscription.organization_id,
        plan=plan,
        period=subscription.period,
        kind=kind,
        amount=amount,
        monthly_fee=plan.monthly_fee,
        transfer_id=transfer_id,
    )


# --- Periods: renewal and collection --------------------------------------------------------------------------


def subscription_settle(*, subscription_id: int, now: datetime | None = None) -> str:
    """Bring one subscription up to date, in one transaction: renew it when its period has ended, or
    collect this period's fee while it is past_due. Answers its status after. Running it twice, or
    concurrently, charges once: the subscription's row lock orders the runs, and a run finds the
    period already advanced (and the charge's unique key stands behind that)."""
    now = now or timezone.now()
    with transaction.atomic(durable=True):
        subscription: Subscription = locks.subscription_lock(subscription_id=subscription_id)
        if not _renew(subscription, now=now):
            _collect(subscription, now=now)
    return subscription.status


def _renew(subscription: Subscription, *, now: datetime) -> bool:
    """Start the period `now` falls in for a locked subscription whose period has ended: end it when a
    cancellation was scheduled or the last period's fee was never paid; apply a scheduled downgrade;
    debit the period's fee and grant the included quantities, or, when the wallet cannot pay, make it
    past_due (no money moved, no quantity granted, the period still advances: the fee is owed). Answers
    whether anything was done. Periods that passed whole without a renewal are not charged."""
    period = period_of(now)
    if subscription.status == SubscriptionStatus.CANCELED or subscription.period >= period:
        return False
    if subscription.status == SubscriptionStatus.PAST_DUE or subscription.cancel_at_period_end:
        unpaid = subscription.status == SubscriptionStatus.PAST_DUE
        subscription.status = SubscriptionStatus.CANCELED
        subscription.canceled_at = now
        subscription.save(update_fields=["status", "canceled_at"])
        if unpaid:
            _notify_after_commit(subscription.pk, SubscriptionNotice.CANCELED_UNPAID)
        return True
    if subscription.next_plan is not None:
        subscription.plan = subscription.next_plan
        subscription.next_plan = None
    subscription.period = period
    if not _pay_period(subscription, fraction=Fraction(1)):
        subscription.status = SubscriptionStatus.PAST_DUE
        _notify_after_commit(subscription.pk, SubscriptionNotice.PAST_DUE)
    subscription.save(update_fields=["plan", "next_plan", "period", "status"])
    return True


def _collect(subscription: Subscription, *, now: datetime) -> bool:
    """Collect the fee of a locked past_due subscription's current period: the full period fee, and the
    included quantities pro rata from now. Answers whether it is active again."""
    if subscription.status != SubscriptionStatus.PAST_DUE or subscription.period != period_of(now):
        return False
    if not _pay_period(subscription, fraction=fraction_left(now)):
        return False
    subscription.status = SubscriptionStatus.ACTIVE
    subscription.save(update_fields=["status"])
    return True


def _pay_period(subscription: Subscription, *, fraction: Fraction) -> bool:
    """Grant the plan's included quantities × fraction and debit its full period fee, both or neither
    (a savepoint); False when the wallet cannot pay."""
    plan = subscription.plan
    try:
        with transaction.atomic():
            _grant(subscription, plan=plan, fraction=fraction)
            _charge(subscription, plan=plan, kind=SubscriptionChargeKind.PERIOD_FEE, amount=plan.monthly_fee)
    except ledger.InsufficientBalance:
        return False
    return True


def subscriptions_due(*, now: datetime | None = None) -> list[int]:
    """Subscriptions the beat task must settle: not canceled, and whose period has ended or whose fee is unpaid."""
    period = period_of(now or timezone.now())
    due = Subscription.objects.exclude(status=SubscriptionStatus.CANCELED).filter(
        Q(period__lt=period) | Q(status=SubscriptionStatus.PAST_DUE)
    )
    return list(due.order_by("pk").values_list("pk", flat=True))


def subscriptions_renew(*, now: datetime | None = None) -> dict[str, int]:
    """The beat task: settle every subscription due, each in its own transaction. One that fails is
    logged and left for the next run; it never stops the others."""
    counts = {"settled": 0, "failed": 0}
    for subscription_id in subscriptions_due(now=now):
        try:
            subscription_settle(subscription_id=subscription_id, now=now)
        except Exception:  # the next run retries it; the others must still renew
            logger.exception("could not settle subscription %s", subscription_id)
            counts["failed"] += 1
        else:
            counts["settled"] += 1
    return counts


def subscription_collect(*, organization_id: int, now: datetime | None = None) -> str | None:
    """Collect the unpaid fee of the organization's past_due subscription (after its wallet was
    credited). Answers its status after, or None when nothing was past due."""
    subscription_id = (
        Subscription.objects.filter(organization_id=organization_id, status=SubscriptionStatus.PAST_DUE)
        .values_list("pk", flat=True)
        .first()
    )
    if subscription_id is None:
        return None
    return subscription_settle(subscription_id=subscription_id, now=now)


# --- Notices ----------------------------------------------------------------------------------------------------


class SubscriptionNotice(StrEnum):
    PAST_DUE = "past_due"
    CANCELED_UNPAID = "canceled_unpaid"


def _notify_after_commit(subscription_id: int, notice: SubscriptionNotice) -> None:
    def enqueue() -> None:
        from metering import tasks

        try:
            tasks.subscription_notify.delay(subscription_id, str(notice))
        except Exception:  # a broker outage must not undo a renewal that committed
            logger.exception("could not queue the %s notice of subscription %s", notice, subscription_id)

    transaction.on_commit(enqueue)


def subscription_notify(*, subscription_id: int, notice: str) -> int:
    """Email the organization's owners and admins that its plan's fee could not be paid (past_due) or
    that the subscription ended unpaid. Answers how many were emailed."""
    subscription = Subscription.objects.select_related("organization", "plan").get(pk=subscription_id)
    organization, plan = subscription.organization, subscription.plan
    recipients = list(
        Membership.objects.filter(organization=organization, role__in=MANAGER_ROLES).values_list("user__email", flat=True)
    )
    if not recipients:
        return 0
    fee = f"{money_str(plan.monthly_fee)} {settings.CURRENCY}"
    if notice == SubscriptionNotice.PAST_DUE:
        subject = f"[Tollgate] {organization.name}: your {plan.name} plan's fee is unpaid"
        message = (
            f"The monthly fee of the {plan.name} plan ({fee}) for {subscription.period:%B %Y} could not be paid from the "
            f"balance of {organization.name}. The plan's included quantities and prices are paused, and usage is charged "
            "at the standard prices, until it is paid. Recharge your balance on the Billing page of your dashboard: "
            "the fee is collected as soon as the money arrives."
        )
    else:
        subject = f"[Tollgate] {organization.name}: your {plan.name} plan has ended"
        message = (
            f"The monthly fee of the {plan.name} plan was not paid before the month ended, so the subscription of "
            f"{organization.name} ended. You can choose a plan again on the Plan page of your dashboard."
        )
    send_mail(subject=subject, message=message, from_email=settings.DEFAULT_FROM_EMAIL, recipient_list=recipients)
    return len(recipients)
