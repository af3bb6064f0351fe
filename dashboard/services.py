"""Writes the dashboard owns: a wallet's alert settings and signing secret, through payments' services."""

from __future__ import annotations

from decimal import Decimal

from payments.models import Wallet
from payments.services import wallet_alert_secret_rotate, wallet_settings_update

__all__ = ["wallet_alert_secret_rotate", "wallet_alerts_update"]


def wallet_alerts_update(*, organization_id: int, low_balance_threshold: Decimal, alert_webhook_url: str) -> Wallet:
    """Set the low-balance threshold and the alert webhook URL (these two columns only)."""
    return wallet_settings_update(
        organization_id=organization_id, low_balance_threshold=low_balance_threshold, alert_webhook_url=alert_webhook_url
    )
