"""Writes for payments: recharges, provider notifications, settlement, refunds, redemption codes.

A provider is never called inside a transaction or under a lock: commit a pending state, call
out, then lock again and apply. Money moves only through `payments.ledger`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Organization, User
from accounts.selectors import API_KEYS
from billing_site import locks, metrics
from billing_site.errors import DomainError, ErrorCode, IdempotencyConflict, InvalidRequest
from billing_site.money import ZERO, currency_exponent
from payments import credits, ledger, receipts
from payments.models import (
    GRANT_PRIORITY_DEFAULT,
    GRANT_PRIORITY_MAX,
    GRANT_PRIORITY_MIN,
    STRIPES_MAX,
    STRIPES_MIN,
    Account,
    GrantCategory,
    GrantSource,
    LedgerEntry,
    Payment,
    PaymentStatus,
    Receipt,
    Redemption,
    RedemptionCode,
    Refund,
    RefundStatus,
    TransferKind,
    Wallet,
    WebhookEvent,
    alert_signing_secret_new,
    stripes_balance,
)
from payments.providers import (
    ProviderError,
    ProviderEvent,
    ProviderUnreachable,
    WebhookRefused,
    provider_get,
    providers_enabled,
)
from payments.providers.base import Outcome

logger = logging.getLogger(__name__)


class ProviderUnavailable(DomainError):
    code = ErrorCode.PROVIDER_ERROR
    message = "The payment provider could not be reached; nothing was charged. Try again."


class InvalidCode(DomainError):
    code = ErrorCode.INVALID_CODE
    message = "This code cannot be redeemed."


# --- Wallet settings ---------------------------------------------------------------------------------

WALLET_SETTINGS = ("credit_limit", "low_balance_threshold", "alert_webhook_url", "stripes")


def wallet_settings_update(*, organization_id: int, **changes: Decimal | str | int) -> Wallet:
    """Change a wallet's settings (credit limit, low-balance threshold, alert webhook URL, and — staff
    only — its stripes: 0 for one row, or STRIPES_MIN..STRIPES_MAX to make it high-volume): only the
    named columns are written, so this can never write back a balance or holds read earlier (the
    ledger owns those, and the wallet's trigger refuses anyone else). InvalidRequest on a bad value."""
    unknown = sorted(set(changes) - set(WALLET_SETTINGS))
    if unknown:
        raise ValueError(f"not wallet settings: {', '.join(unknown)}")
    for name in ("credit_limit", "low_balance_threshold"):
        amount = changes.get(name)
        if amount is not None and (not isinstance(amount, Decimal) or not amount.is_finite() or amount < ZERO):
            raise InvalidRequest(f"`{name}` is a non-negative amount.", details={name: ["Zero or more."]})
    stripes = changes.pop("stripes", None)
    if stripes is not None and (
        not isinstance(stripes, int) or isinstance(stripes, bool) or (stripes != 0 and not STRIPES_MIN <= stripes <= STRIPES_MAX)
    ):
        raise InvalidRequest(
            f"`stripes` is 0 (one row) or {STRIPES_MIN}..{STRIPES_MAX}.",
            details={"stripes": [f"0, or {STRIPES_MIN} to {STRIPES_MAX}."]},
        )
    # The API key cache carries the organization's copy of the stripe count: announced before any lock.
    announce = API_KEYS.invalidating() if stripes is not None else contextlib.nullcontext()
    with transaction.atomic(), announce:
        if changes:
            Wallet.objects.filter(pk=organization_id).update(**changes)
        if stripes is not None:
            ledger.wallet_stripes_set(organization_id=organization_id, stripes=stripes)
        elif "credit_limit" in changes:
            # The credit limit is the floor of the wallet row; the stripes' money may have to cover it.
            ledger.wallet_stripes_rebalance(organization_id=organization_id)
    return Wallet.objects.get(pk=organization_id)


def wallet_adjust_by_staff(*, organization_id: int, amount: Decimal, reason: str, staff_id: int | None) -> ledger.Posting:
    """A staff adjustment (signed amount, mandatory reason) as an `adjustment` transfer. InvalidRequest
    for a zero amount or no reason; InsufficientBalance when a debit would pass the wallet's limit."""
    if not amount.is_finite() or amount == ZERO:
        raise InvalidRequest("An adjustment moves a non-zero amount.", details={"amount": ["Must not be zero."]})
    if not reason.strip():
        raise InvalidRequest("An adjustment needs a reason.", details={"reason": ["This field is required."]})
    return ledger.wallet_adjust(organization_id=organization_id, amount=amount, reason=reason, created_by_id=staff_id)


def wallet_alert_secret_rotate(*, organization_id: int) -> str:
    """Give the organization a new alert signing secret (that column only) and answer it; alerts are
    signed with it from now on."""
    secret = alert_signing_secret_new()
    Wallet.objects.filter(pk=organization_id).update(alert_signing_secret=secret)
    return secret


# --- Recharge ---------------------------------------------------------------------------------------


def recharge_amount_validate(amount: Decimal, currency: str) -> Decimal:
    """Amount bounds and decimal places come from settings and the currency; InvalidRequest otherwise."""
    places = currency_exponent(currency)
    if not amount.is_finite() or amount != amount.quantize(Decimal(1).scaleb(-places)):
        raise InvalidRequest(
            f"{currency} amounts have at most {places} decimal places.", details={"amount": [f"At most {places} decimal places."]}
        )
    if not settings.RECHARGE_MIN <= amount <= settings.RECHARGE_MAX:
        raise InvalidRequest(
            f"A recharge is between {settings.RECHARGE_MIN} and {settings.RECHARGE_MAX} {currency}.",
            details={"amount": [f"Between {settings.RECHARGE_MIN} and {settings.RECHARGE_MAX}."]},
        )
    return amount


def _request_hash(**fields: Any) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def payment_recharge_start(
    *, organization: Organization, user: User | None, amount: Decimal, provider: str, idempotency_key: str | None = None
) -> tuple[Payment, bool]:
    """Create a pending payment and its provider checkout. Answers (payment, replayed). The
    provider is called after the pending payment committed, outside any transaction."""
    try:
        provider_impl = provider_get(provider)
    except KeyError as exc:
        raise InvalidRequest(f"Unknown payment provider {provider!r}.", details={"provider": ["Unknown provider."]}) from exc
    currency = organization.wallet.currency
    amount = recharge_amount_validate(amount, currency)
    request_hash = _request_hash(amount=amount, provider=provider)
    if idempotency_key:
        existing = Payment.objects.filter(organization=organization, idempotency_key=idempotency_key).first()
        if existing is not None:
            if existing.request_hash != request_hash:
                raise IdempotencyConflict()
            return existing, True
    payment = Payment(
        organization=organization,
        provider=provider,
        amount=amount,
        currency=currency,
        created_by=user,
        idempotency_key=idempotency_key or None,
        request_hash=request_hash,
    )
    try:
        payment.save()
    except IntegrityError:
        existing = Payment.objects.get(organization=organization, idempotency_key=idempotency_key)
        if existing.request_hash != request_hash:
            raise IdempotencyConflict() from None
        return existing, True
    site = settings.SITE_URL.rstrip("/")
    try:
        checkout = provider_impl.create_checkout(
            payment,
            success_url=f"{site}/dashboard/payments/{payment.pk}/?result=success",
            cancel_url=f"{site}/dashboard/payments/{payment.pk}/?result=cancel",
        )
    except ProviderError as exc:
        Payment.objects.filter(pk=payment.pk, status=PaymentStatus.PENDING).update(
            status=PaymentStatus.FAILED, failure_reason=str(exc)[:255], updated_at=timezone.now()
        )
        metrics.PAYMENTS.labels(provider, PaymentStatus.FAILED).inc()
        raise ProviderUnavailable() from exc
    metrics.PAYMENTS.labels(provider, PaymentStatus.PENDING).inc()
    Payment.objects.filter(pk=payment.pk).update(
        provider_reference=checkout.reference, checkout_url=checkout.url, livemode=checkout.livemode, updated_at=timezone.now()
    )
    payment.refresh_from_db()
    return payment, False


# --- Webhooks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookReceipt:
    event: WebhookEvent
    duplicate: bool


def webhook_receive(*, provider: str, body: bytes, headers: Mapping[str, str]) -> WebhookReceipt:
    """Verify a provider notification, check it against our payment, store it once (per provider
    event id) and queue settlement after commit. Raises WebhookRefused, changing nothing."""
    try:
        provider_impl = provider_get(provider)
    except KeyError as exc:
        raise WebhookRefused(f"unknown provider {provider!r}") from exc
    event = provider_impl.parse_webhook(body, headers)
    payment = None
    if event.outcome != Outcome.IGNORED:
        payment = _payment_matching(provider, event)
    try:
        with transaction.atomic():
            stored = WebhookEvent.objects.create(
                provider=provider,
                event_id=event.event_id,
                event_type=event.event_type,
                payload=event.payload,
                organization_id=payment.organization_id if payment else None,
                payment=payment,
                processed_at=timezone.now() if payment is None else None,
            )
            if payment is not None:
                transaction.on_commit(lambda: _queue_settlement(stored.pk))
    except IntegrityError:
        return WebhookReceipt(event=WebhookEvent.objects.get(provider=provider, event_id=event.event_id), duplicate=True)
    return WebhookReceipt(event=stored, duplicate=False)


def _payment_matching(provider: str, event: ProviderEvent) -> Payment:
    """The payment an event speaks of, if amount, currency and mode all match it exactly."""
    payment = None if event.payment_id is None else Payment.objects.filter(pk=event.payment_id, provider=provider).first()
    if payment is None:
        raise WebhookRefused("the event names no payment of this provider")
    if event.amount != payment.amount or event.currency != payment.currency:
        raise WebhookRefused("the event's amount or currency differs from the payment")
    if event.livemode != payment.livemode:
        raise WebhookRefused("the event's live/test mode differs from the payment")
    if event.event_type.startswith("payment_intent.") and not payment.auto:
        raise WebhookRefused("an off-session PaymentIntent event for a payment auto top-up did not start")
    if event.provider_reference and payment.provider_reference and event.provider_reference != payment.provider_reference:
        raise WebhookRefused("the event's provider reference differs from the payment")
    return payment


def _queue_settlement(event_id: int) -> None:
    from payments.tasks import payment_settle

    try:
        payment_settle.delay(event_id)
    except Exception:  # the sweeper settles it later; the notification itself is safely stored
        logger.exception("could not queue settlement of webhook event %s", event_id)


# --- Settlement ---------------------------------------------------------------------------------------

OUTCOME_STATUS = {Outcome.FAILED: PaymentStatus.FAILED, Outcome.CANCELED: PaymentStatus.CANCELED}


class _NothingToDo(Exception):
    pass


def payment_settle(*, event_id: int) -> Payment | None:
    """Apply a stored notification: credit the wallet and mark the payment succeeded, or mark it
    failed / canceled. At most once per payment, however often it runs (docs/contract.md §2.5)."""
    # the organization too: the receipt is made out to it, and read here rather than under the locks
    event = WebhookEvent.objects.select_related("payment__organization").filter(pk=event_id).first()
    if event is None or event.payment is None:
        return None
    payment = event.payment
    outcome = _event_outcome(event)
    try:
        with transaction.atomic(durable=True):
            # Lock (wallet, then payment: billing_site/locks.py), check, then credit.
            locks.wallet_lock(organization_id=payment.organization_id)
            locked: Payment = locks.payment_lock(payment_id=payment.pk)
            WebhookEvent.objects.filter(pk=event.pk, processed_at__isnull=True).update(processed_at=timezone.now())
            if outcome == Outcome.IGNORED or not _awaits(locked, outcome):
                raise _NothingToDo()  # keeps nothing: the event is marked processed below, outside this rollback
            now = timezone.now()
            if outcome == Outcome.SUCCEEDED:
                posting = ledger.wallet_credit(
                    organization_id=payment.organization_id,
                    amount=payment.amount,
                    kind=TransferKind.RECHARGE,
                    counter_account=Account.PAYMENTS_CLEARING,
                    reference=f"payment:{payment.pk}",
                )
                Payment.objects.filter(pk=payment.pk).update(
                    status=PaymentStatus.SUCCEEDED, transfer_id=posting.transfer_id, settled_at=now, updated_at=now
                )
                # Its receipt, numbered by the database with the credit, so numbers follow settlements.
                receipt_issue(payment=payment, now=now)
            else:
                Payment.objects.filter(pk=payment.pk).update(status=OUTCOME_STATUS[outcome], settled_at=now, updated_at=now)
    except _NothingToDo:
        WebhookEvent.objects.filter(pk=event.pk, processed_at__isnull=True).update(processed_at=timezone.now())
        metrics.SETTLEMENTS.labels("no_change").inc()
        payment.refresh_from_db()
        return payment
    payment.refresh_from_db()
    metrics.SETTLEMENTS.labels(payment.status).inc()
    metrics.PAYMENTS.labels(payment.provider, payment.status).inc()
    metrics.SETTLEMENT_LAG.observe((timezone.now() - event.received_at).total_seconds())
    if payment.status == PaymentStatus.SUCCEEDED:
        metrics.amount_observed(metrics.RECHARGES, currency=payment.currency, amount=payment.amount)
    return payment


def receipt_issue(*, payment: Payment, now: datetime) -> Receipt:
    """The receipt of a credited payment, made out to its organization's billing details (as loaded with
    the payment) and the seller as they are now; numbered by the database. Joins the caller's
    transaction (the credit's, or the sweep's); a second receipt of one payment is refused (IntegrityError)."""
    organization = payment.organization
    return Receipt.objects.create(
        organization_id=organization.pk, payment_id=payment.pk, issued_at=now, **receipts.document_parties(organization)
    )


def receipts_missing_issue(*, now: datetime | None = None) -> int:
    """Receipts for credited payments that have none: a payment credited by a worker of the release
    before receipts existed, during the deploy that added them. Oldest credit first, each in its own
    transaction; one a twin sweep made meanwhile is left to it."""
    now = now or timezone.now()
    issued = 0
    missing = (
        Payment.objects.filter(transfer__isnull=False, receipt__isnull=True)
        .select_related("organization")
        .order_by("settled_at", "pk")
    )
    for payment in missing[:500]:
        try:
            with transaction.atomic(durable=True):
                receipt_issue(payment=payment, now=now)
        except IntegrityError:
            continue
        issued += 1
    return issued


EXPIRED_REASON = "expired before the payer finished"


def _awaits(payment: Payment, outcome: Outcome) -> bool:
    """Whether this outcome may still apply. A payment our sweep gave up on (never one the provider
    canceled) still takes a late success: the provider says the money arrived, so it is credited."""
    if payment.status == PaymentStatus.PENDING:
        return True
    return outcome == Outcome.SUCCEEDED and payment.status == PaymentStatus.CANCELED and payment.failure_reason == EXPIRED_REASON


def _event_outcome(event: WebhookEvent) -> Outcome:
    provider_event = event.event_type
    if event.provider == "sandbox":
        return {"payment.succeeded": Outcome.SUCCEEDED, "payment.failed": Outcome.FAILED}.get(provider_event, Outcome.IGNORED)
    if provider_event == "checkout.session.completed":
        session = event.payload.get("data", {}).get("object", {})
        return Outcome.SUCCEEDED if session.get("payment_status") in ("paid", "no_payment_required") else Outcome.IGNORED
    return {
        "checkout.session.async_payment_succeeded": Outcome.SUCCEEDED,
        "checkout.session.async_payment_failed": Outcome.FAILED,
        "checkout.session.expired": Outcome.CANCELED,
        # Auto top-up's off-session charges (only those reach a payment: see the provider's parse_webhook).
        "payment_intent.succeeded": Outcome.SUCCEEDED,
        "payment_intent.payment_failed": Outcome.FAILED,
    }.get(provider_event, Outcome.IGNORED)


def payments_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Settle notifications that were stored but never applied (a worker died in between), and
    cancel pending payments older than PAYMENT_PENDING_TTL."""
    now = now or timezone.now()
    stale_events = WebhookEvent.objects.filter(
        processed_at__isnull=True, payment__isnull=False, received_at__lt=now - timedelta(seconds=60)
    )
    settled = 0
    for event_id in stale_events.values_list("pk", flat=True)[:500]:
        payment_settle(event_id=event_id)
        settled += 1
    canceled = Payment.objects.filter(status=PaymentStatus.PENDING, created_at__lt=now - settings.PAYMENT_PENDING_TTL).update(
        status=PaymentStatus.CANCELED, failure_reason=EXPIRED_REASON, updated_at=now
    )
    return {"settled": settled, "canceled": canceled, "receipts": receipts_missing_issue(now=now)}


# --- Refunds ---------------------------------------------------------------------------------------------


def payment_refund(*, payment: Payment, amount: Decimal, reason: str, staff: User, force: bool = False) -> Refund:
    """Refund part or all of a succeeded payment through its provider, then post a `refund`
    transfer. The amount is first reserved on the wallet (a hold), so the wallet cannot spend it
    while the provider is called; `force` (with a reason) allows going below the available balance."""
    if not reason.strip():
        raise InvalidRequest("A refund needs a reason.", details={"reason": ["This field is required."]})
    if amount <= ZERO:
        raise InvalidRequest("A refund is a positive amount.", details={"amount": ["Must be positive."]})
    if payment.provider not in providers_enabled():
        raise InvalidRequest(
            f"The {payment.provider} provider is not enabled here, so it cannot refund this payment: refund it at the "
            "provider, then record the refund as an adjustment with its reason."
        )
    with transaction.atomic(durable=True):
        if force:
            locks.wallet_lock(organization_id=payment.organization_id)
        else:
            held = ledger.wallet_hold(organization_id=payment.organization_id, amount=amount, usage=False)  # the wallet's lock
            # Credit grants are never paid back as cash: only ungranted money may leave (docs/credits.md).
            refundable = (
                held.posting.balance_after
                - held.posting.held_after
                - credits.granted_total(organization_id=payment.organization_id)
            )
            if refundable < ZERO:
                raise InvalidRequest(
                    "Credit grants are not refundable: the wallet's money beyond its grants is less than this refund.",
                    details={"amount": [f"At most {max(amount + refundable, ZERO).normalize():f} is refundable now."]},
                )
        locked: Payment = locks.payment_lock(payment_id=payment.pk)
        pending = sum(locked.refunds.filter(status=RefundStatus.PENDING).values_list("amount", flat=True), ZERO)
        if locked.status not in (PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED):
            raise InvalidRequest("Only a succeeded payment can be refunded.")
        if amount > locked.amount - locked.refunded_amount - pending:
            raise InvalidRequest(
                "That is more than remains refundable on this payment.",
                details={"amount": [f"At most {locked.amount - locked.refunded_amount - pending}."]},
            )
        refund = Refund.objects.create(
            organization_id=payment.organization_id, payment=locked, amount=amount, reason=reason, forced=force, created_by=staff
        )
    return refund_complete(refund=refund)


class _RefundSettled(Exception):
    """Another run completed or failed this refund first: roll back what this run did."""


def refund_complete(*, refund: Refund) -> Refund:
    """Ask the provider for the refund (keyed by our Refund row, so a retry never refunds twice) and
    settle it: post the `refund` transfer, or release the reservation on a definitive refusal. With
    no definitive answer (network, outage) the refund stays pending for the sweeper to retry. Safe
    to run any number of times."""
    payment = refund.payment
    try:
        provider = provider_get(payment.provider)
    except KeyError as exc:  # disabled since the refund started: keep the reservation, retry when it is back
        raise ProviderUnavailable(f"The {payment.provider} provider is not enabled; the refund stays pending.") from exc
    try:
        reference = provider.refund(payment, refund.amount, idempotency_key=f"tollgate-refund-{refund.pk}")
    except ProviderUnreachable as exc:
        raise ProviderUnavailable("The provider did not answer; the refund stays pending and will be retried.") from exc
    except ProviderError as exc:
        try:
            with transaction.atomic(durable=True):
                _lock_pending_refund(refund)
                if not refund.forced:
                    ledger.wallet_release(organization_id=payment.organization_id, amount=refund.amount)
                Refund.objects.filter(pk=refund.pk).update(status=RefundStatus.FAILED, provider_reference=str(exc)[:255])
        except _RefundSettled:
            pass
        raise ProviderUnavailable("The provider refused the refund; nothing moved.") from exc
    try:
        with transaction.atomic(durable=True):
            locked = _lock_pending_refund(refund)
            posting = ledger.transfer_post(
                organization_id=payment.organization_id,
                kind=TransferKind.REFUND,
                amount=-refund.amount,
                counter_account=Account.PAYMENTS_CLEARING,
                reference=f"payment:{payment.pk}",
                memo=refund.reason,
                created_by_id=refund.created_by_id,
                release_held=ZERO if refund.forced else refund.amount,
                may_overdraw=True,
            )
            refunded = locked.refunded_amount + refund.amount
            status = PaymentStatus.REFUNDED if refunded == locked.amount else PaymentStatus.PARTIALLY_REFUNDED
            Payment.objects.filter(pk=payment.pk).update(
                refunded_amount=F("refunded_amount") + refund.amount, status=status, updated_at=timezone.now()
            )
            Refund.objects.filter(pk=refund.pk).update(
                status=RefundStatus.SUCCEEDED, provider_reference=reference, transfer_id=posting.transfer_id
            )
    except _RefundSettled:
        pass
    refund.refresh_from_db()
    return refund


def _lock_pending_refund(refund: Refund) -> Payment:
    """Lock the wallet, the payment, then the refund (the documented order), and raise
    _RefundSettled unless the refund is still pending — before any money moves, so a second run
    never frees the reservation twice. Answers the locked payment."""
    locks.wallet_lock(organization_id=refund.organization_id)
    payment: Payment = locks.payment_lock(payment_id=refund.payment_id)
    locked: Refund = locks.refund_lock(refund_id=refund.pk)
    if locked.status != RefundStatus.PENDING:
        raise _RefundSettled()
    return payment


def refunds_sweep(*, older_than: timedelta = timedelta(minutes=5), now: datetime | None = None) -> int:
    """Retry refunds left pending (the process died, or the provider did not answer). Answers how
    many were settled."""
    now = now or timezone.now()
    settled = 0
    for refund in Refund.objects.select_related("payment").filter(status=RefundStatus.PENDING, created_at__lt=now - older_than)[
        :100
    ]:
        try:
            if refund_complete(refund=refund).status != RefundStatus.PENDING:
                settled += 1
        except ProviderUnavailable:
            logger.warning("refund %s is still pending at its provider", refund.pk)
    return settled


# --- Redemption codes -------------------------------------------------------------------------------------

GRANT_EXPIRES_DAYS_MAX = 3660
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: codes are read and typed by people


def code_digest(code: str) -> str:
    return hashlib.sha256(code.strip().upper().replace("-", "").encode()).hexdigest()


def redemption_codes_generate(
    *,
    batch: str,
    amount: Decimal,
    count: int,
    max_uses: int = 1,
    expires_at: datetime | None,
    created_by: User | None,
    grant_priority: int = GRANT_PRIORITY_DEFAULT,
    grant_expires_days: int | None = None,
) -> list[str]:
    """Create `count` unguessable codes (100 bits each) and answer them: the only time they exist in clear.
    A redemption puts a promotional credit grant of the code's amount into the wallet, burned at
    `grant_priority` and expiring `grant_expires_days` after the redemption (never when None)."""
    if not 1 <= count <= 10_000 or max_uses < 1 or amount <= ZERO:
        raise InvalidRequest("Between 1 and 10,000 codes, each worth a positive amount, usable at least once.")
    if not GRANT_PRIORITY_MIN <= grant_priority <= GRANT_PRIORITY_MAX:
        raise InvalidRequest(f"The credit's priority is from {GRANT_PRIORITY_MIN} to {GRANT_PRIORITY_MAX}; lower burns first.")
    if grant_expires_days is not None and not 1 <= grant_expires_days <= GRANT_EXPIRES_DAYS_MAX:
        raise InvalidRequest(f"The credit expires 1 to {GRANT_EXPIRES_DAYS_MAX:,} days after redemption, or never.")
    codes = ["-".join("".join(secrets.choice(CODE_ALPHABET) for _ in range(5)) for _ in range(4)) for _ in range(count)]
    RedemptionCode.objects.bulk_create(
        RedemptionCode(
            batch=batch,
            prefix=code[:5],
            digest=code_digest(code),
            amount=amount,
            currency=settings.CURRENCY,
            max_uses=max_uses,
            expires_at=expires_at,
            created_by=created_by,
            grant_priority=grant_priority,
            grant_expires_days=grant_expires_days,
        )
        for code in codes
    )
    return codes


def code_redeem(*, organization: Organization, user: User | None, code: str) -> ledger.Posting:
    """Credit the wallet with a code's value as a promotional credit grant (one `redemption` transfer
    from promotions, with the code's grant priority and expiry). Refused, moving nothing, when the code
    is unknown, expired, used up, or already redeemed by this organization; concurrent redemptions
    never exceed max uses (the row update is conditional)."""
    voucher = RedemptionCode.objects.filter(digest=code_digest(code)).first() if isinstance(code, str) else None
    if voucher is None:
        raise InvalidCode("Unknown code.")
    now = timezone.now()
    if voucher.expires_at is not None and voucher.expires_at <= now:
        raise InvalidCode("This code has expired.")
    currency = Wallet.objects.filter(organization_id=organization.pk).values_list("currency", flat=True).get()
    if voucher.currency != currency:
        raise InvalidCode(f"This code is worth {voucher.currency}; your balance is kept in {currency}.")
    try:
        with transaction.atomic(durable=True):
            grant = credits.grant_create_in_transaction(
                organization_id=organization.pk,
                spec=credits.GrantSpec(
                    amount=voucher.amount,
                    category=GrantCategory.PROMOTIONAL,
                    priority=voucher.grant_priority,
                    expires_at=now + timedelta(days=voucher.grant_expires_days) if voucher.grant_expires_days else None,
                    reason=f"Redemption code {voucher.prefix}…",
                ),
                source=GrantSource.REDEMPTION,
                reference=f"code:{voucher.pk}",
                created_by_id=user.pk if user else None,
                kind=TransferKind.REDEMPTION,
                counter_account=Account.PROMOTIONS,
            )
            claimed = RedemptionCode.objects.filter(pk=voucher.pk, uses__lt=F("max_uses")).update(uses=F("uses") + 1)
            if not claimed:
                raise InvalidCode("This code has been used up.")
            Redemption.objects.create(organization=organization, code=voucher, transfer_id=grant.transfer_id, created_by=user)
            # The credit posted to the wallet row; a high-volume wallet's stripes hold the rest of its balance.
            row_after = (
                LedgerEntry.objects.filter(transfer_id=grant.transfer_id, account=Account.WALLET)
                .values_list("balance_after", flat=True)
                .get()
            )
            assert row_after is not None  # a wallet entry always records its balance after
            balance_after = row_after + stripes_balance(organization_id=organization.pk)
    except IntegrityError as exc:
        raise InvalidCode("Your organization already redeemed this code.") from exc
    return ledger.Posting(transfer_id=grant.transfer_id, amount=voucher.amount, balance_after=balance_after, held_after=ZERO)
