"""The soak's organizations, made through the real services, and the checks of what it did to them.

N organizations `bench-soak-00` …, each owned by its own person (`bench-soak-00@bench.invalid`, so that
the dashboard and the JWT need no organization switch) with a fresh live API key per run, and one
TOKENS service priced like a large language model. Wallets are funded once through the ledger
(`wallet_adjust`); after that only the soak's recharges, settled by the Celery worker, add money.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

SLUG = "bench-soak-{:02d}"
EMAIL = "bench-soak-{:02d}@bench.invalid"
SERVICE_SLUG = "bench-soak-tokens"
INPUT_PRICE = Decimal("2.50")  # per 1,000,000 tokens
OUTPUT_PRICE = Decimal("10.00")
FUNDING = Decimal("50.00")  # a soak wallet starts a run with at least half of this


@dataclass(frozen=True)
class SoakTenant:
    slug: str
    organization_id: int
    email: str
    password: str
    api_key_id: int
    api_key: str


def ensure(*, count: int, run_label: str) -> list[SoakTenant]:
    """Make what is missing; give every owner a fresh password and every organization a fresh key."""
    from django.db import transaction

    from accounts.models import Organization, User
    from accounts.services import api_key_create, organization_create
    from metering.models import CalcMethod, Price, Service
    from metering.services import price_create, service_create
    from payments.ledger import wallet_adjust

    service = Service.objects.filter(slug=SERVICE_SLUG).first() or service_create(
        slug=SERVICE_SLUG, name="Bench soak tokens", calc_method=CalcMethod.TOKENS
    )
    if not service.active or service.calc_method != CalcMethod.TOKENS:
        raise SystemExit(f"soak: the service {SERVICE_SLUG} exists but is inactive or not TOKENS; use another database.")
    if not Price.objects.filter(service=service, organization__isnull=True).exists():
        price_create(
            service=service,
            organization_id=None,
            effective_from=None,
            created_by_id=None,
            input_price=INPUT_PRICE,
            output_price=OUTPUT_PRICE,
        )
    tenants = []
    for i in range(count):
        slug, email, password = SLUG.format(i), EMAIL.format(i), secrets.token_urlsafe(18)
        with transaction.atomic():
            owner = User.objects.filter(email=email).first() or User.objects.create_user(email=email, password=None)
            owner.set_password(password)
            owner.save(update_fields=["password"])
            organization = Organization.objects.filter(slug=slug).first()
            if organization is None:
                organization = organization_create(name=slug, owner=owner)
                if organization.slug != slug:
                    raise SystemExit(f"soak: wanted the slug {slug}, got {organization.slug}")
            created = api_key_create(organization=organization, name=f"soak {run_label}", created_by=owner)
        balance = organization.wallet.balance
        if balance < FUNDING / 2:
            wallet_adjust(
                organization_id=organization.pk, amount=FUNDING - balance, reason="bench soak funding", created_by_id=None
            )
        tenants.append(
            SoakTenant(
                slug=slug,
                organization_id=organization.pk,
                email=email,
                password=password,
                api_key_id=created.api_key.pk,
                api_key=created.secret,
            )
        )
    return tenants


def revoke_keys(tenants: list[SoakTenant]) -> None:
    """The run's keys are of no use after it: revoke them, so the bench database gathers no live secrets."""
    from accounts.models import ApiKey
    from accounts.services import api_key_revoke

    for api_key in ApiKey.objects.filter(pk__in=[t.api_key_id for t in tenants]):
        api_key_revoke(api_key=api_key)


def wallets(organization_ids: list[int]) -> dict[int, dict[str, Decimal]]:
    from payments.models import Wallet

    return {
        row["organization_id"]: {"balance": row["balance"], "held": row["held"]}
        for row in Wallet.objects.filter(organization_id__in=organization_ids).values("organization_id", "balance", "held")
    }


def settlement(event_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The stored sandbox notifications with these provider event ids: when received and processed."""
    from payments.models import WebhookEvent

    rows = WebhookEvent.objects.filter(provider="sandbox", event_id__in=event_ids).values(
        "event_id", "received_at", "processed_at", "payment_id"
    )
    return {row["event_id"]: dict(row) for row in rows}


def check_payments(
    *, organization_ids: list[int], expected: dict[int, tuple[str, Decimal]], unnotified: set[int], since: datetime
) -> list[dict[str, Any]]:
    """Each recharge the soak notified ended as its notification said, succeeded ones credited exactly once with
    their amount, failed ones never; and no payment these organizations started since `since` is left pending,
    but those whose notification the soak never sent (`unnotified`: their requests already count as errors)."""
    from django.db.models import Count, Q, Sum

    from payments.models import LedgerEntry, Payment, PaymentStatus, Transfer, TransferKind

    payments = {p["id"]: p for p in Payment.objects.filter(pk__in=list(expected)).values("id", "status", "amount", "transfer_id")}
    references = [f"payment:{pk}" for pk in expected]
    credits: dict[str, int] = dict(
        Transfer.objects.filter(kind=TransferKind.RECHARGE, reference__in=references)
        .values_list("reference")
        .annotate(n=Count("id"))
    )
    credited = dict(
        LedgerEntry.objects.filter(account="wallet", transfer__kind=TransferKind.RECHARGE, transfer__reference__in=references)
        .values_list("transfer__reference")
        .annotate(total=Sum("amount"))
    )
    wrong_status, wrong_credit = [], []
    for pk, (status, amount) in expected.items():
        payment = payments.get(pk)
        if payment is None or payment["status"] != status or payment["amount"] != amount:
            wrong_status.append(pk)
        reference = f"payment:{pk}"
        transfers = credits.get(reference, 0)
        if status == PaymentStatus.SUCCEEDED:
            if transfers != 1 or credited.get(reference) != amount:
                wrong_credit.append(pk)
        elif transfers != 0:
            wrong_credit.append(pk)
    pending = Payment.objects.filter(
        Q(pk__in=list(expected)) | Q(created_at__gte=since), organization_id__in=organization_ids, status=PaymentStatus.PENDING
    ).exclude(pk__in=list(unnotified))
    return [
        {"name": "every recharge ended as its notification said", "violations": len(wrong_status), "sample": wrong_status[:5]},
        {
            "name": "succeeded recharges credited exactly once with their amount, failed ones never",
            "violations": len(wrong_credit),
            "sample": wrong_credit[:5],
        },
        {
            "name": f"no recharge of this run left pending (but {len(unnotified)} never notified)",
            "violations": pending.count(),
            "sample": [],
        },
    ]


def check_holds(*, organization_ids: list[int], since: datetime, now: datetime, ended: dict[int, str]) -> list[dict[str, Any]]:
    """No hold of this run (made since `since`) still active though it expired before `now` (beat's holds-expire
    runs every minute: pass the present minus that period); every hold the soak captured or released is so in
    the database; each wallet's `held` equals the sum of its active holds."""
    from django.db.models import Sum

    from metering.models import Hold, HoldStatus
    from payments.models import Wallet

    overdue = Hold.objects.filter(
        organization_id__in=organization_ids, created_at__gte=since, status=HoldStatus.ACTIVE, expires_at__lt=now
    ).count()
    statuses = dict(Hold.objects.filter(pk__in=list(ended)).values_list("id", "status"))
    wrong = [pk for pk, status in ended.items() if statuses.get(pk) != status]
    active = dict(
        Hold.objects.filter(organization_id__in=organization_ids, status=HoldStatus.ACTIVE, test=False)
        .values_list("organization_id")
        .annotate(total=Sum("amount"))
    )
    held_wrong = [
        org
        for org, held in Wallet.objects.filter(organization_id__in=organization_ids).values_list("organization_id", "held")
        if held != active.get(org, Decimal(0))
    ]
    return [
        {"name": "no hold left active past its expiry", "violations": overdue, "sample": []},
        {"name": "every hold ended as the soak asked (captured or released)", "violations": len(wrong), "sample": wrong[:5]},
        {"name": "each wallet's held == the sum of its active holds", "violations": len(held_wrong), "sample": held_wrong[:5]},
    ]


def check_records(*, organization_ids: list[int], key_prefix: str, answered: int) -> dict[str, Any]:
    """The usage records with this run's idempotency keys: exactly as many as the 201 answers the soak counted."""
    from metering.models import UsageRecord

    stored = UsageRecord.objects.filter(organization_id__in=organization_ids, idempotency_key__startswith=key_prefix).count()
    return {
        "name": f"usage records written == events answered 201 ({answered:,})",
        "violations": abs(stored - answered),
        "sample": [f"{stored:,} stored"],
    }
