"""`manage.py gateway_seed_demo`: the demo's sandbox upstream and its routes (`seed_demo` runs it).
Idempotent: what exists is left as it is."""

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from gateway import services
from gateway.models import ModelRoute, Upstream
from metering.models import Service

SANDBOX_UPSTREAM = "sandbox"
# (public model, pricing service, the model name the sandbox is sent)
DEMO_ROUTES = (("gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini"), ("dall-e-3", "dall-e-3", "dall-e-3"))


class Command(BaseCommand):
    help = "Create the demo's sandbox upstream and its model routes, once."

    def handle(self, *args, **options) -> None:
        with transaction.atomic():
            if not Upstream.objects.filter(name=SANDBOX_UPSTREAM).exists():
                services.upstream_create(name=SANDBOX_UPSTREAM, base_url=settings.GATEWAY_SANDBOX_URL, sandbox=True)
            created = []
            for model, service, upstream_model in DEMO_ROUTES:
                if ModelRoute.objects.filter(model=model).exists() or not Service.objects.filter(slug=service).exists():
                    continue
                services.model_route_create(
                    model=model,
                    service=service,
                    upstreams=[services.RouteUpstreamSpec(upstream=SANDBOX_UPSTREAM, upstream_model=upstream_model)],
                )
                created.append(model)
        if created:
            upstream = Upstream.objects.get(name=SANDBOX_UPSTREAM)
            self.stdout.write(f"  gateway routes:     {', '.join(created)} → {upstream.name} ({upstream.base_url})")
