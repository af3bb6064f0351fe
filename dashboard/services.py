"""Writes the dashboard owns: a wallet's alert settings and signing secret (payments has no service for them)."""

from __future__ import annotations

from decimal import Decimal

from billing_site.errors import InvalidRequest
from billing_site.money import ZERO
from payments.models import Wallet, alert_signing_secret_new


def wallet_alerts_update(*, organization_id: int, low_balance_threshold: Decimal, alert_webhook_url: str) -> Wallet:
    """Set the low-balance threshold and the alert webhook URL: these two fields only, with a
    conditional UPDATE, so it can never overwrite the balance or holds that the ledger writes."""
    if not low_balance_threshold.is_finite() or low_balance_threshold < ZERO:
        raise InvalidRequest("The threshold is zero or more.", details={"low_balance_threshold": ["Zero or more."]})
    Wallet.objects.filter(pk=organization_id).update(
        low_balance_threshold=low_balance_threshold, alert_webhook_url=alert_webhook_url
    )
    return Wallet.objects.get(pk=organization_id)


def wallet_alert_secret_rotate(*, organization_id: int) -> str:
    """Give the organization a new alert signing secret (that column only) and answer it; alerts are
    signed with it from now on."""
    secret = alert_signing_secret_new()
    Wallet.objects.filter(pk=organization_id).update(alert_signing_secret=secret)
    return secret
