"""The gateway's configuration: upstreams (where calls go) and model routes (which public model name is
priced by which Service and served by which upstreams, in order). Staff edit both in the back office
and the staff API; the request path reads them through `gateway.selectors` (cached)."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from metering.models import Service


class Upstream(models.Model):
    """An OpenAI-compatible server the gateway calls. Its API key is stored encrypted
    (`gateway.crypto`) and never shown again."""

    name = models.SlugField(max_length=80, unique=True)
    base_url = models.URLField(max_length=500, help_text="Up to and including /v1, e.g. https://api.openai.com/v1.")
    api_key_encrypted = models.TextField(blank=True, editable=False)
    connect_timeout_seconds = models.FloatField(default=5.0, validators=[MinValueValidator(0.1), MaxValueValidator(60)])
    timeout_seconds = models.FloatField(
        default=60.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(600)],
        help_text="Longest wait for the first byte of an answer.",
    )
    idle_timeout_seconds = models.FloatField(
        default=30.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(600)],
        help_text="Longest wait between two chunks of a stream.",
    )
    max_concurrency = models.PositiveIntegerField(
        default=100,
        validators=[MinValueValidator(1), MaxValueValidator(100_000)],
        help_text="Calls in flight at once, all processes.",
    )
    sandbox = models.BooleanField(
        default=False, help_text="A free test server: test-mode keys may call it (they never reach any other upstream)."
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name


class Outcome(models.TextChoices):
    """How a gateway call ended (docs/gateway.md, "Outcomes"); recorded in its usage record's metadata."""

    COMPLETED = "completed", "Completed"
    CLIENT_DISCONNECTED = "client_disconnected", "Client left"
    UPSTREAM_FAILED = "upstream_failed", "Upstream failed"
    NO_USAGE_REPORTED = "no_usage_reported", "No usage report"


class OnDisconnect(models.TextChoices):
    DRAIN = "drain", "Drain: keep reading upstream and charge what it reports"
    CANCEL = "cancel", "Cancel: close upstream and charge what was delivered (estimated)"


class ModelRoute(models.Model):
    """A public model name customers send, the Service that prices it, and its upstreams in order."""

    model = models.CharField(max_length=120, unique=True)
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="+")
    on_disconnect = models.CharField(max_length=6, choices=OnDisconnect.choices, default=OnDisconnect.DRAIN)
    default_max_tokens = models.PositiveIntegerField(
        default=4096,
        validators=[MinValueValidator(1), MaxValueValidator(1_000_000)],
        help_text="Sent upstream when the client sets no maximum, so the hold is a true worst case.",
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.model


class RouteUpstream(models.Model):
    """One upstream of a route, with the model name that upstream expects; tried in `position` order."""

    route = models.ForeignKey(ModelRoute, on_delete=models.CASCADE, related_name="upstreams")
    upstream = models.ForeignKey(Upstream, on_delete=models.PROTECT, related_name="routes")
    upstream_model = models.CharField(max_length=120)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["route", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["route", "upstream"], name="route_upstream_once"),
            models.CheckConstraint(condition=~Q(upstream_model=""), name="route_upstream_model_named"),
        ]

    def __str__(self) -> str:
        return f"{self.route} → {self.upstream} ({self.upstream_model})"
