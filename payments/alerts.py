"""Alerts to an organization's owners and admins, by email and its signed webhook.

Low-balance alerts: once per crossing of the threshold, re-armed by a top-up (the ledger clears the
flag when a credit lifts the balance back to the threshold). Budget alerts: once per period per
threshold (50/80/100 %), claimed on the period's BudgetSpend row (docs/credits.md)."""

from __future__ import annotations

import json
import logging
import time

from django.conf import settings
from django.core.mail import send_mail
from django.db import connection
from django.utils import timezone

from accounts.models import MANAGER_ROLES, Membership
from billing_site.money import money_str
from billing_site.outbound import destination_post
from payments.budgets import budget_period_end
from payments.ledger import BUDGET_LEVEL, LOW_BALANCE_CROSSED
from payments.models import BUDGET_ALERT_PERCENTS, AlertDelivery, AlertDeliveryKind, BudgetMode, BudgetSpend, Wallet
from payments.providers.sandbox import sign
from payments.validators import alert_webhook_destination

logger = logging.getLogger(__name__)
ALERT_SIGNATURE_HEADER = "Tollgate-Signature"
BUDGET_PERIOD_ADJECTIVES = {"day": "daily", "week": "weekly", "month": "monthly"}


def low_balance_claim(*, organization_id: int) -> Wallet | None:
    """Flip the wallet's alert flag if it is below its threshold and not yet alerted; answer the
    wallet when this call won the flip (so exactly one alert goes out per crossing)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE payments_wallet SET low_balance_alerted = true WHERE organization_id = %s AND {LOW_BALANCE_CROSSED}",
            [organization_id],
        )
        claimed = cursor.rowcount
    return Wallet.objects.select_related("organization").get(organization_id=organization_id) if claimed else None


def low_balance_notify(*, wallet: Wallet, email: bool = True, webhook: bool = True) -> None:
    """Email the owners and admins (`email`); POST a signed JSON body to the alert webhook if one
    is set (`webhook`, see alert_webhook_post). The task sends each separately, so a retried webhook
    never re-sends the email."""
    organization = wallet.organization
    recipients = list(
        Membership.objects.filter(organization=organization, role__in=MANAGER_ROLES).values_list("user__email", flat=True)
    )
    balance, threshold = money_str(wallet.balance), money_str(wallet.low_balance_threshold)
    if email and recipients:
        send_mail(
            subject=f"[Tollgate] {organization.name}: balance below {threshold} {wallet.currency}",
            message=f"The balance of {organization.name} is {balance} {wallet.currency}, below your alert threshold of "
            f"{threshold}. Top up to keep your API calls flowing.",
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=recipients,
        )
    if webhook and wallet.alert_webhook_url:
        body = json.dumps(
            {
                "type": "balance.low",
                "organization": organization.slug,
                "balance": balance,
                "threshold": threshold,
                "currency": wallet.currency,
                "created_at": timezone.now().isoformat(),
            }
        ).encode()
        alert_webhook_post(wallet=wallet, body=body, kind=AlertDeliveryKind.BALANCE_LOW)


def budget_alert_claim(*, spend_id: int) -> tuple[BudgetSpend, int] | None:
    """Raise the spend row's `alerted` to the level its spend has reached, if that is higher; answer the
    row and the level when this call won the raise. The UPDATE's condition is re-checked on the row
    it locks, so of concurrent or repeated claims exactly one wins each level."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE payments_budgetspend SET alerted = {BUDGET_LEVEL} WHERE id = %s AND alerted < {BUDGET_LEVEL} RETURNING alerted",
            [spend_id],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return BudgetSpend.objects.select_related("budget__api_key", "organization").get(pk=spend_id), row[0]


def budget_alert_notify(*, spend: BudgetSpend, level: int, email: bool = True, webhook: bool = True) -> None:
    """Tell the owners and admins (`email`) and the alert webhook (`webhook`) that the budget's scope
    spent `BUDGET_ALERT_PERCENTS[level - 1]` % of it this period."""
    budget, organization = spend.budget, spend.organization
    wallet = Wallet.objects.select_related("organization").get(organization_id=organization.pk)
    percent = BUDGET_ALERT_PERCENTS[level - 1]
    scope = f"API key {budget.api_key.prefix}… ({budget.api_key.name})" if budget.api_key else organization.name
    spent, amount = money_str(spend.spent), money_str(spend.amount)
    resets_at = budget_period_end(budget.period, spend.period_start)
    recipients = list(
        Membership.objects.filter(organization=organization, role__in=MANAGER_ROLES).values_list("user__email", flat=True)
    )
    if email and recipients:
        every = BUDGET_PERIOD_ADJECTIVES[budget.period]
        lines = [
            f"{scope} has spent {spent} {wallet.currency} of its {every} budget of {amount} this period ({percent}% or more)."
        ]
        if percent == 100:
            lines.append(
                "Usage beyond it is refused until the budget resets."
                if budget.mode == BudgetMode.HARD
                else "It is a soft budget: usage goes on; this is a warning."
            )
        lines.append(f"The budget resets at {resets_at:%Y-%m-%d %H:%M} UTC.")
        send_mail(
            subject=f"[Tollgate] {organization.name}: {percent}% of the {every} budget of {scope} spent",
            message=" ".join(lines),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=recipients,
        )
    if webhook and wallet.alert_webhook_url:
        body = json.dumps(
            {
                "type": "budget.threshold",
                "organization": organization.slug,
                "budget": budget.pk,
                "scope": "api_key" if budget.api_key_id else "organization",
                "api_key": budget.api_key_id,
                "period": budget.period,
                "mode": budget.mode,
                "percent": percent,
                "spent": spent,
                "amount": amount,
                "currency": wallet.currency,
                "period_start": spend.period_start.isoformat(),
                "resets_at": resets_at.isoformat(),
                "created_at": timezone.now().isoformat(),
            }
        ).encode()
        alert_webhook_post(wallet=wallet, body=body, kind=AlertDeliveryKind.BUDGET_THRESHOLD)


class AlertWebhookFailed(Exception):
    """The receiver did not answer 2xx (a redirect included: it is never followed)."""


def alert_webhook_post(*, wallet: Wallet, body: bytes, kind: AlertDeliveryKind) -> None:
    """POST `body`, signed with the organization's own secret, to its webhook URL. The URL is checked
    again here, against what DNS answers now, and the connection goes to the address just checked:
    DestinationRefused when it points into a private network. AlertWebhookFailed for a non-2xx answer.
    Every attempt, whatever its outcome, is written to the organization's delivery log."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Tollgate-Alerts/1.0",
        ALERT_SIGNATURE_HEADER: sign(body, secret=wallet.alert_signing_secret),
    }
    started = time.monotonic()
    status: int | None = None
    try:
        destination = alert_webhook_destination(wallet.alert_webhook_url)
        status = destination_post(destination, body=body, headers=headers)
        if not 200 <= status < 300:
            raise AlertWebhookFailed(f"the alert webhook answered {status}")
    except Exception as exc:
        _delivery_log(wallet, kind, status=status, started=started, error=str(exc) or type(exc).__name__)
        raise
    _delivery_log(wallet, kind, status=status, started=started, error="")


def _delivery_log(wallet: Wallet, kind: AlertDeliveryKind, *, status: int | None, started: float, error: str) -> None:
    AlertDelivery.objects.create(
        organization_id=wallet.organization_id,
        kind=kind,
        url=wallet.alert_webhook_url[:500],
        status_code=status,
        delivered=not error,
        error=error[:300],
        duration_ms=round((time.monotonic() - started) * 1000),
    )


def alert_webhook_test_send(*, organization_id: int) -> AlertDelivery:
    """POST a signed `test` alert to the organization's webhook now and answer the logged attempt
    (failures included: they are what the person wants to see). Nothing is retried."""
    wallet = Wallet.objects.select_related("organization").get(organization_id=organization_id)
    body = json.dumps(
        {
            "type": "test",
            "organization": wallet.organization.slug,
            "balance": money_str(wallet.balance),
            "threshold": money_str(wallet.low_balance_threshold),
            "currency": wallet.currency,
            "created_at": timezone.now().isoformat(),
        }
    ).encode()
    if not wallet.alert_webhook_url:
        raise ValueError("no alert webhook URL is set")
    try:
        alert_webhook_post(wallet=wallet, body=body, kind=AlertDeliveryKind.TEST)
    except Exception:
        logger.info("test alert of organization %s not delivered", organization_id, exc_info=True)
    return AlertDelivery.objects.filter(organization_id=organization_id).latest("id")


def auto_recharge_off_notify(*, organization_id: int, email: bool = True, webhook: bool = True) -> None:
    """Auto top-up turned itself off: email the owners and admins (`email`), POST a signed
    `auto_recharge.off` body to the alert webhook if one is set (`webhook`)."""
    from payments.auto_models import AutoRecharge

    wallet = Wallet.objects.select_related("organization").get(organization_id=organization_id)
    setting = AutoRecharge.objects.get(pk=organization_id)
    organization = wallet.organization
    recipients = list(
        Membership.objects.filter(organization=organization, role__in=MANAGER_ROLES).values_list("user__email", flat=True)
    )
    if email and recipients:
        send_mail(
            subject=f"[Tollgate] {organization.name}: auto top-up is off",
            message=f"Auto top-up of {organization.name} turned itself off: {setting.disabled_reason} "
            f"Check the saved payment method, then turn it on again on the Billing page. "
            f"The balance is {money_str(wallet.balance)} {wallet.currency}.",
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=recipients,
        )
    if webhook and wallet.alert_webhook_url:
        body = json.dumps(
            {
                "type": "auto_recharge.off",
                "organization": organization.slug,
                "reason": setting.disabled_reason,
                "balance": money_str(wallet.balance),
                "currency": wallet.currency,
                "created_at": timezone.now().isoformat(),
            }
        ).encode()
        alert_webhook_post(wallet=wallet, body=body, kind=AlertDeliveryKind.AUTO_RECHARGE_OFF)
