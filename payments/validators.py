"""The rule an organization's alert webhook URL must pass: when it is saved (the dashboard, any model
form such as the admin's) and again, the check that counts, each time an alert is sent."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

from billing_site.outbound import Destination, DestinationRefused, destination_resolve


def alert_webhook_destination(url: str) -> Destination:
    """Where an alert for `url` may go: https (http too in development) to a host whose every address
    is public (or private, with ALERT_WEBHOOK_ALLOW_PRIVATE). DestinationRefused otherwise."""
    if not settings.DEVELOPMENT and urlsplit(url).scheme != "https":
        raise DestinationRefused("Use an https:// URL.")
    return destination_resolve(url, allow_private=settings.ALERT_WEBHOOK_ALLOW_PRIVATE)


def alert_webhook_url_validate(url: str) -> None:
    try:
        alert_webhook_destination(url)
    except DestinationRefused as refused:
        raise ValidationError(str(refused), code="unsafe_destination") from refused
