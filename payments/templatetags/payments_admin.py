"""The back office's front page: key figures, payments needing attention, the last reconciliation."""

from typing import Any

from django import template
from django.conf import settings

from payments import reconciliation, selectors

register = template.Library()


@register.inclusion_tag("admin/payments/_billing_operations.html")
def billing_operations(usage: Any) -> dict[str, Any]:
    """`usage`: metering's figures (revenue, active organizations), which this floor cannot read itself."""
    return {
        "currency": settings.CURRENCY,
        "usage": usage,
        "recharges": selectors.recharge_figures(),
        "attention": selectors.payments_needing_attention(),
        "last_reconciliation": reconciliation.reconciliation_last_run(),
    }
