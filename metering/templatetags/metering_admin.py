"""The back office's usage and holds panels on an organization's page (the organization's admin lives
in payments, which does not import metering: the template pulls these in)."""

from typing import Any

from django import template

from accounts.models import Organization
from metering import selectors

register = template.Library()


@register.inclusion_tag("admin/metering/_organization_usage.html")
def organization_usage(organization: Organization, currency: str) -> dict[str, Any]:
    return {
        "organization": organization,
        "currency": currency,
        "recent_usage": selectors.usage_recent(organization_id=organization.pk, limit=10),
        "active_holds": selectors.holds_active(organization_id=organization.pk, limit=10),
    }


@register.simple_tag
def usage_figures() -> selectors.UsageFigures:
    return selectors.usage_figures()
