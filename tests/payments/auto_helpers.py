"""Helpers for the auto top-up tests: settings made through the real service, and the sandbox's
signed notification carried over "the network" (responses, at the HTTP boundary) to our own webhook."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from decimal import Decimal
from urllib.parse import urlsplit

import responses
from django.conf import settings
from rest_framework.test import APIClient

from payments import auto_recharge
from payments.auto_models import AutoRecharge

D = Decimal


def auto_enable(
    organization,
    *,
    threshold: str = "5",
    amount: str = "20",
    monthly_max: str = "100",
    provider: str = "sandbox",
    payment_method: str | None = "pm_sandbox_ok",
) -> AutoRecharge:
    return auto_recharge.auto_recharge_update(
        organization_id=organization.pk,
        data=auto_recharge.AutoRechargeInput(
            enabled=True,
            threshold=D(threshold),
            amount=D(amount),
            monthly_max=D(monthly_max),
            provider=provider,
            payment_method=payment_method,
        ),
    )


def stripe_card_save(organization, payment_method: str = "pm_card_visa", customer: str = "cus_fake_1") -> AutoRecharge:
    return auto_recharge.auto_recharge_card_save(
        organization_id=organization.pk, stripe_customer=customer, payment_method=payment_method
    )


@contextlib.contextmanager
def sandbox_network() -> Iterator[list]:
    """Carry the sandbox's webhook POSTs to our own webhook endpoint, untouched; answer what was sent."""
    delivered: list = []

    def forward(request):
        delivered.append(request)
        response = APIClient().post(
            urlsplit(request.url).path,
            data=request.body,
            content_type="application/json",
            HTTP_TOLLGATE_SIGNATURE=request.headers["Tollgate-Signature"],
        )
        return response.status_code, {}, response.content

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_callback(responses.POST, settings.SANDBOX_WEBHOOK_URL, callback=forward)
        yield delivered
