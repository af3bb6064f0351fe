"""Every dashboard page, at desktop and phone width, with realistic data: the screenshots are
looked at by people (test-output/screenshots/), and the test fails on any broken page, external
request, CSP violation or script error."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

import pytest
import requests
from django.utils import timezone

from accounts import services as account_services
from accounts.models import Role
from dashboard import services as dashboard_services
from metering.models import CalcMethod, UsageRollup
from payments.models import Payment, PaymentStatus
from tests.browser.axe import axe_check
from tests.browser.conftest import PHONE
from tests.browser.helpers import log_in
from tests.factories import UserFactory, organization_create, service_with_price, wallet_fund

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAGES = [
    ("overview", "/dashboard/"),
    ("usage", "/dashboard/usage/"),
    ("keys", "/dashboard/keys/"),
    ("billing", "/dashboard/billing/"),
    ("pricing", "/dashboard/pricing/"),
    ("team", "/dashboard/team/"),
    ("settings", "/dashboard/settings/"),
]


def _demo_organization():
    owner = UserFactory(email="ada@example.com", name="Ada Lovelace")
    organization = organization_create(name="Analytical Engines", owner=owner)
    organization_create(name="Side Project", owner=owner)  # so the switcher shows
    services = [
        service_with_price(slug="gpt-4o", calc_method=CalcMethod.TOKENS, input_price="2.50", output_price="10.00"),
        service_with_price(slug="gpt-4o-mini", calc_method=CalcMethod.TOKENS, input_price="0.15", output_price="0.60"),
        service_with_price(slug="translate", calc_method=CalcMethod.CHAR_COUNT, unit_price="0.02"),
        service_with_price(slug="dall-e-3", calc_method=CalcMethod.IMAGE_RESOLUTION, unit_price="0.01"),
        service_with_price(slug="moderation", calc_method=CalcMethod.REQUEST, unit_price="0.0005"),
    ]
    wallet_fund(organization, "120.50")
    today = timezone.now().date()
    rng = random.Random(7)
    for days_ago in range(1, 30):
        for service in services:
            if rng.random() < 0.25:
                continue
            cost = Decimal(rng.randint(5, 400)) / 100 * (3 if service.slug == "gpt-4o" else 1)
            UsageRollup.objects.create(
                organization=organization,
                service=service,
                day=today - timedelta(days=days_ago),
                events=rng.randint(10, 900),
                quantity=rng.randint(1000, 90000),
                cost=cost,
            )
    live = account_services.api_key_create(organization=organization, name="Production backend", created_by=owner)
    account_services.api_key_create(organization=organization, name="Staging", mode="test", created_by=owner)
    old = account_services.api_key_create(organization=organization, name="Old laptop", created_by=owner)
    account_services.api_key_revoke(api_key=old.api_key)
    for status, amount in [
        (PaymentStatus.SUCCEEDED, "100.00"),
        (PaymentStatus.FAILED, "50.00"),
        (PaymentStatus.SUCCEEDED, "25.00"),
    ]:
        Payment.objects.create(
            organization=organization,
            provider="sandbox",
            amount=Decimal(amount),
            currency="USD",
            status=status,
            provider_reference="sbx_demo",
            settled_at=timezone.now(),
        )
    for role, email in [(Role.ADMIN, "grace@example.com"), (Role.MEMBER, "alan@example.com")]:
        organization.memberships.create(user=UserFactory(email=email), role=role)
    account_services.invitation_create(organization=organization, email="linus@example.com", role=Role.MEMBER, invited_by=owner)
    dashboard_services.wallet_alerts_update(
        organization_id=organization.pk, low_balance_threshold=Decimal("150"), alert_webhook_url=""
    )
    return owner, organization, live


def test_every_page_at_desktop_and_phone_width(visitor_factory, live_server, eager_settlement):
    owner, organization, live = _demo_organization()

    for i, body in enumerate(
        [
            {"service": "gpt-4o", "input_tokens": 1200, "output_tokens": 350},
            {"service": "translate", "text": "Hello, world! Bonjour le monde."},
            {"service": "moderation"},
            {"service": "dall-e-3", "width": 1024, "height": 1024},
        ]
    ):
        response = requests.post(
            f"{live_server.url}/api/v1/usage/",
            json={**body, "idempotency_key": f"gallery-{i}"},
            headers={"Authorization": f"Bearer {live.secret}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text

    desktop = visitor_factory()
    log_in(desktop, owner.email)
    phone = visitor_factory(viewport=PHONE, name="phone", storage_state=desktop.context.storage_state())
    for visitor in (desktop, phone):
        for name, path in PAGES:
            visitor.goto(path)
            visitor.shot(name)
            axe_check(visitor.page, context=f"{path} ({visitor.name})")
    phone.page.get_by_role("button", name="Open navigation").click()
    phone.page.wait_for_timeout(300)
    phone.shot("navigation-open", full_page=False)

    # Confirmation and detail pages.
    payment = Payment.objects.filter(organization=organization, status=PaymentStatus.SUCCEEDED).first()
    revocable = organization.api_keys.filter(revoked_at__isnull=True).first()
    member = organization.memberships.get(user__email="alan@example.com")
    for visitor in (desktop, phone):
        for name, path in [
            ("payment", f"/dashboard/payments/{payment.pk}/"),
            ("key-revoke", f"/dashboard/keys/{revocable.pk}/revoke/"),
            ("member-remove", f"/dashboard/team/{member.pk}/remove/"),
            ("password-change", "/dashboard/settings/password/"),
            ("key-created", f"/dashboard/keys/{revocable.pk}/created/"),
            ("billing-older", "/dashboard/billing/?before=999999999"),
        ]:
            visitor.goto(path)
            visitor.shot(name)
            axe_check(visitor.page, context=f"{path} ({visitor.name})")
    invitation = account_services.invitation_create(
        organization=organization, email="ken@example.com", role=Role.ADMIN, invited_by=owner
    )

    for viewport, label in ((None, "desktop"), (PHONE, "phone")):
        anonymous = visitor_factory(name=label, **({"viewport": viewport} if viewport else {}))
        for name, path in [
            ("login", "/login/"),
            ("signup", "/signup/"),
            ("password-reset", "/password-reset/"),
            ("invitation", f"/invite/{invitation.token}/"),
        ]:
            anonymous.goto(path)
            anonymous.shot(name)
            axe_check(anonymous.page, context=f"{path} ({anonymous.name})")
