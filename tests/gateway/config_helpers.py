"""Arrangement helpers for the gateway's configuration tests (staff API, back office, selectors)."""

from __future__ import annotations

import importlib

from django.contrib.auth.models import Group
from django.test import Client
from rest_framework.test import APIClient

from gateway import services
from gateway.models import ModelRoute, Upstream
from tests.conftest import jwt_client
from tests.factories import UserFactory

UPSTREAMS = "/api/v1/admin/upstreams/"
MODELS = "/api/v1/admin/models/"
PLAIN_KEY = "sk-live-0123456789abcdefSECRET"


def staff_groups() -> None:
    """The staff groups with the gateway's permissions (transactional tests elsewhere truncate them;
    the data migrations' functions are idempotent)."""
    from django.apps import apps

    importlib.import_module("metering.migrations.0004_staff_groups_payments").extend_groups(apps, None)
    importlib.import_module("gateway.migrations.0002_staff_groups").extend_groups(apps, None)


def staff_member(group: str):
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


def staff_api_client(group: str) -> tuple[APIClient, object]:
    user = staff_member(group)
    return jwt_client(user), user


def staff_admin_client(group: str) -> tuple[Client, object]:
    user = staff_member(group)
    client = Client()
    client.force_login(user)
    return client, user


def upstream_add(name: str = "openai", *, api_key: str = PLAIN_KEY, **options) -> Upstream:
    return services.upstream_create(name=name, base_url=f"https://{name}.example.com/v1", api_key=api_key, **options)


def route_add(model: str, service: str, *upstreams: str | tuple[str, str], **options) -> ModelRoute:
    specs = [
        services.RouteUpstreamSpec(upstream=u, upstream_model=model) if isinstance(u, str) else services.RouteUpstreamSpec(*u)
        for u in upstreams
    ]
    return services.model_route_create(model=model, service=service, upstreams=specs, **options)
