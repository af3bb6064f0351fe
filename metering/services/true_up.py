"""The volume true-up (docs/pricing.md): once a period has closed, a volume price's events are charged
again at the rates of the tier the period's total reached, and the difference posts once, as a usage
transfer (a credit when the events paid more, a charge when they paid less)."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from billing_site.money import EXACT, ZERO, money_round
from metering.calculators import Quantities
from metering.models import PriceModel, Service, UsagePosition, UsageRecord, VolumeTrueUp
from metering.pricing import chargeable_units, unit_prices_from_row, volume_target
from metering.services.positions import period_bounds, period_of
from payments import ledger
from payments.models import Account, TransferKind


def volume_true_up(*, organization_id: int, service_id: int, period: date) -> VolumeTrueUp | None:
    """True up one organization's volume-priced live usage of one service in one closed period, exactly
    once (a unique row written in the same transaction as the transfer; a period without volume-priced
    usage gets a row of zeros, so it is looked at once): None when it was done already. Events priced with different volume prices (a price changed mid-period)
    are each charged again at their own price's tier for the period's total."""
    if period >= period_of(timezone.now()):
        raise ValueError("a period is trued up once it has closed")
    service = Service.objects.get(pk=service_id)
    position = UsagePosition.objects.filter(
        organization_id=organization_id, service_id=service_id, period=period, test=False
    ).first()
    if position is None:
        return None
    start, end = period_bounds(period)
    records = UsageRecord.objects.filter(
        organization_id=organization_id,
        service_id=service_id,
        test=False,
        created_at__gte=start,
        created_at__lt=end,
        pricing__model=PriceModel.VOLUME,
        position__isnull=False,
    ).only("quantity", "input_tokens", "output_tokens", "cached_input_tokens", "cost", "position", "pricing", "transfer_id")
    charged = ZERO
    paid_by: set[int] = set()  # the usage transfers that charged the month's records
    units: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    prices = {}
    latest_price_id = None
    for record in records.order_by("created_at", "id").iterator():
        assert record.pricing is not None and record.position is not None
        price_id = latest_price_id = record.pricing["price_id"]
        if price_id not in prices:
            prices[price_id] = unit_prices_from_row(_KeptPrice(record.pricing), service.calc_method)
        quantities = Quantities(record.quantity, record.input_tokens, record.output_tokens, record.cached_input_tokens)
        for name, count in chargeable_units(
            service.calc_method, quantities, start=record.position, free_until=record.pricing["free_until"]
        ).items():
            units[price_id][name] += count
        charged += record.cost
        if record.transfer_id is not None:
            paid_by.add(record.transfer_id)
    # A tier's flat fee is paid once a period: the reached tier's of the price the period ended with.
    target = ZERO
    for price_id, per_field in units.items():
        last = price_id == latest_price_id
        amount = volume_target(service.calc_method, per_field, prices[price_id], total=position.used, flat_fee=last)
        target = EXACT.add(target, amount)
    target = money_round(target)
    difference = target - charged
    try:
        with transaction.atomic(durable=True):
            true_up = VolumeTrueUp.objects.create(
                organization_id=organization_id, service_id=service_id, period=period, charged=charged, target=target
            )
            if difference:
                posting = ledger.transfer_post(
                    organization_id=organization_id,
                    kind=TransferKind.USAGE,
                    amount=-difference,
                    counter_account=Account.REVENUE,
                    reference=f"true-up:{service.slug}:{period:%Y-%m}",
                    memo=f"Volume true-up of {service.slug} for {period:%B %Y}",
                    may_overdraw=True,  # the usage was delivered
                    budgeted=False,  # settles a closed month: its budgets' periods are over
                )
                if difference < ZERO and posting.transfer_id is not None:
                    # a credit of the month's usage goes back to the grants that paid for it (docs/credits.md)
                    ledger.grants_give_back(
                        organization_id=organization_id,
                        transfer_id=posting.transfer_id,
                        reversed_transfer_ids=sorted(paid_by),
                        amount=-difference,
                    )
                true_up.transfer_id = posting.transfer_id
                VolumeTrueUp.objects.filter(pk=true_up.pk).update(transfer_id=posting.transfer_id)
    except IntegrityError:
        return None  # done already, by a twin run
    return true_up


class _KeptPrice:
    """A usage record's `pricing`, shaped like a price row for `unit_prices_from_row`."""

    def __init__(self, kept: dict[str, object]) -> None:
        self.price_id = kept["price_id"]
        self.model = kept["model"]
        self.tiers = kept.get("tiers")
        self.package_size = None
        self.input_price = self.output_price = self.unit_price = self.cached_input_price = None


def volume_true_ups_run(*, now: datetime | None = None, limit: int = 1000) -> int:
    """True up the live positions of closed periods not trued up yet (the beat task; safe to run twice
    and concurrently). Answers how many it trued up."""
    current = period_of(now or timezone.now())
    done = VolumeTrueUp.objects.filter(
        organization_id=OuterRef("organization_id"), service_id=OuterRef("service_id"), period=OuterRef("period")
    )
    pending = (
        UsagePosition.objects.filter(test=False, period__lt=current)
        .exclude(Exists(done))
        .order_by("period", "organization_id", "service_id")
        .values_list("organization_id", "service_id", "period")[:limit]
    )
    written = 0
    for organization_id, service_id, period in pending:
        if volume_true_up(organization_id=organization_id, service_id=service_id, period=period) is not None:
            written += 1
    return written
