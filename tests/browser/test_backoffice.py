"""The back office as billing staff see it, with realistic data: every page it shows is
screenshotted (test-output/screenshots/admin-*.png), checked with axe-core (no critical or serious
violation), and fails on any broken page, external request, or script error."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import requests
from django.contrib.auth.models import Group
from django.utils import timezone

from accounts import services as account_services
from metering.models import CalcMethod, Plan, Subscription
from payments import ledger
from payments.models import Payment, PaymentStatus, Refund
from tests.browser.axe import axe_check, axe_violations, format_violations
from tests.factories import PASSWORD, UserFactory, organization_create, service_with_price, wallet_fund

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _staff(group: str, email: str):
    import importlib

    from django.apps import apps

    importlib.import_module("metering.migrations.0004_staff_groups_payments").extend_groups(apps, None)
    importlib.import_module("metering.migrations.0012_staff_groups_plans").extend_groups(apps, None)
    user = UserFactory(email=email, is_staff=True, name=group)
    user.groups.add(Group.objects.get(name=group))
    return user


def _back_office_data(live_server_url: str):
    """Two customers with a wallet, keys, usage, payments in every state, and a refund."""
    owner = UserFactory(email="ada@example.com", name="Ada Lovelace")
    organization = organization_create(name="Analytical Engines", owner=owner)
    broke = organization_create(name="Overdrawn Ltd", owner=UserFactory(email="ov@example.com"))
    service_with_price(slug="gpt-4o", calc_method=CalcMethod.TOKENS, input_price="2.50", output_price="10.00")
    service_with_price(slug="moderation", calc_method=CalcMethod.REQUEST, unit_price="0.0005")
    wallet_fund(organization, "120.50")
    live = account_services.api_key_create(organization=organization, name="Production backend", created_by=owner)
    account_services.api_key_create(organization=organization, name="Staging", mode="test", created_by=owner)
    for i, body in enumerate([{"service": "gpt-4o", "input_tokens": 1200, "output_tokens": 350}, {"service": "moderation"}]):
        response = requests.post(
            f"{live_server_url}/api/v1/usage/",
            json={**body, "idempotency_key": f"bo-{i}"},
            headers={"Authorization": f"Bearer {live.secret}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text
    ledger.wallet_hold(usage=True, organization_id=organization.pk, amount=Decimal("2.5"))
    old = timezone.now() - timedelta(days=3)
    for status, amount, created in [
        (PaymentStatus.SUCCEEDED, "100.00", timezone.now()),
        (PaymentStatus.FAILED, "50.00", timezone.now()),
        (PaymentStatus.PENDING, "30.00", old),
    ]:
        Payment.objects.create(
            organization=organization,
            provider="sandbox",
            amount=Decimal(amount),
            currency="USD",
            status=status,
            provider_reference="sbx_demo",
            created_at=created,
            settled_at=None if status == PaymentStatus.PENDING else timezone.now(),
        )
    payment = Payment.objects.filter(status=PaymentStatus.SUCCEEDED).first()
    Refund.objects.create(organization=organization, payment=payment, amount=Decimal(5), reason="unused credit")
    _gateway_configuration()
    _plan_and_subscription(organization)
    return organization, broke


def _plan_and_subscription(organization) -> None:
    """A plan with an included quantity, a tiered plan price and a package price, and a subscriber with
    a charge (after the usage above: their prices would apply to it)."""
    from metering.models import PlanAllowance, Price, Service, SubscriptionCharge

    moderation = Service.objects.get(slug="moderation")
    plan = Plan.objects.create(slug="team", name="Team", monthly_fee=Decimal(49))
    PlanAllowance.objects.create(plan=plan, service=moderation, quantity=10_000)
    Price.objects.create(
        service=moderation,
        plan=plan,
        model="tiered",
        tiers=[{"up_to": 100_000, "unit_price": "0.0004"}, {"up_to": None, "unit_price": "0.0003"}],
        effective_from=timezone.now(),
    )
    Price.objects.create(
        service=Service.objects.get(slug="gpt-4o"),
        model="package",
        unit_price=Decimal(1),
        package_size=1000,
        effective_from=timezone.now() + timedelta(days=30),
    )
    period = timezone.now().date().replace(day=1)
    subscription = Subscription.objects.create(organization=organization, plan=plan, period=period)
    SubscriptionCharge.objects.create(
        subscription=subscription, organization=organization, plan=plan, period=period, kind="start_fee", amount=Decimal("30.12")
    )


def _gateway_configuration() -> None:
    """An upstream with a key, a keyless sandbox, and a route served by both in turn."""
    from gateway import services as gateway_services

    gateway_services.upstream_create(name="openai", base_url="https://api.openai.com/v1", api_key="sk-backoffice-demo")
    gateway_services.upstream_create(name="sandbox", base_url="http://127.0.0.1:8001/sandbox/v1", sandbox=True)
    gateway_services.model_route_create(
        model="gpt-4o",
        service="gpt-4o",
        upstreams=[
            gateway_services.RouteUpstreamSpec(upstream="openai", upstream_model="gpt-4o-2024-08-06"),
            gateway_services.RouteUpstreamSpec(upstream="sandbox", upstream_model="gpt-4o"),
        ],
    )


def _admin_log_in(visitor, email: str) -> None:
    visitor.goto("/admin/login/")
    visitor.page.get_by_label("Email").fill(email)
    visitor.page.get_by_label("Password").fill(PASSWORD)
    visitor.page.get_by_role("button", name="Log in").click()
    visitor.page.wait_for_url("**/admin/")


PAGES = [
    ("admin-index", "/admin/"),
    ("admin-organizations", "/admin/accounts/organization/"),
    ("admin-organization", "/admin/accounts/organization/{organization}/change/"),
    ("admin-adjust", "/admin/accounts/organization/{organization}/adjust/"),
    ("admin-wallet", "/admin/payments/wallet/{organization}/change/"),
    ("admin-ledger", "/admin/payments/ledgerentry/?organization={slug}"),
    ("admin-payments", "/admin/payments/payment/"),
    ("admin-payment", "/admin/payments/payment/{payment}/change/"),
    ("admin-usage", "/admin/metering/usagerecord/?organization={slug}"),
    ("admin-holds", "/admin/metering/hold/"),
    ("admin-reconciliation", "/admin/reconciliation/"),
    ("admin-price-add", "/admin/metering/price/add/"),
    ("admin-prices", "/admin/metering/price/"),
    ("admin-plan", "/admin/metering/plan/{plan}/change/"),
    ("admin-subscription", "/admin/metering/subscription/{subscription}/change/"),
]


def test_back_office_pages(visitor, live_server):
    organization, _ = _back_office_data(live_server.url)
    _staff("Billing admins", "billing@tollgate.test")
    _admin_log_in(visitor, "billing@tollgate.test")
    payment = Payment.objects.filter(status=PaymentStatus.SUCCEEDED).first()
    for name, path in PAGES:
        plan, subscription = Plan.objects.get(slug="team"), Subscription.objects.get(organization=organization)
        visitor.goto(
            path.format(
                organization=organization.pk,
                slug=organization.slug,
                payment=payment.pk,
                plan=plan.pk,
                subscription=subscription.pk,
            )
        )
        axe_check(visitor.page, context=name)
        visitor.shot(name)


def test_billing_staff_work_from_the_organization_page(visitor, live_server):
    """What a billing admin sees and does: the wallet in dollars, recent activity with links, and the
    "Adjust balance" button that posts through the ledger; then the new balance on the page."""
    organization, _ = _back_office_data(live_server.url)
    _staff("Billing admins", "billing@tollgate.test")
    _admin_log_in(visitor, "billing@tollgate.test")
    page = visitor.page

    visitor.goto("/admin/")
    figures = page.locator(".key-figures")
    assert "Revenue today" in figures.text_content() and "Active organizations" in figures.text_content()
    attention = page.locator(".attention").text_content()
    assert "pending over an hour" in attention and "failed" in attention and "waiting for the provider" in attention

    page.get_by_role("link", name="Organizations", exact=True).first.click()
    page.get_by_role("link", name="Overdrawn Ltd").wait_for()
    page.get_by_role("link", name="Analytical Engines").click()
    hub = page.locator(".customer-hub")
    assert "$120.49" in hub.locator(".wallet-summary").inner_text()  # 120.50 funded, 0.0065 + 0.0005 used: $120.493
    assert hub.locator(".wallet-summary span[title='120.493 USD']").count() == 1
    assert "Production backend" in hub.inner_text() and "gpt-4o" in hub.inner_text()
    assert page.get_by_label("Credit limit").input_value() == "0.00"  # plain digits, never 0E-12

    page.get_by_role("link", name="Adjust balance").click()
    page.get_by_label("Amount").fill("10")
    page.get_by_label("Reason").fill("Goodwill for the outage")
    page.get_by_role("button", name="Post adjustment").click()
    page.wait_for_url(f"**/admin/accounts/organization/{organization.pk}/change/")
    assert "balance is now $130.49" in page.locator(".messagelist").inner_text()
    assert "Goodwill for the outage" in page.locator(".customer-hub").inner_text()
    axe_check(page, context="organization page after an adjustment")
    visitor.shot("admin-organization-after-adjustment")

    page.get_by_role("link", name=f"All usage of {organization.name}").click()
    page.get_by_label("Organization slug").wait_for()
    assert page.get_by_label("Organization slug").input_value() == organization.slug
    assert "Production backend" in page.locator("#result_list").inner_text()


def test_support_sees_but_cannot_adjust(visitor, live_server):
    organization, _ = _back_office_data(live_server.url)
    _staff("Support", "support@tollgate.test")
    _admin_log_in(visitor, "support@tollgate.test")
    visitor.goto(f"/admin/accounts/organization/{organization.pk}/change/")
    assert "$120.49" in visitor.page.locator(".wallet-summary").inner_text()
    assert visitor.page.get_by_role("link", name="Adjust balance").count() == 0
    axe_check(visitor.page, context="organization page, read-only")
    visitor.shot("admin-organization-support")


def _every_admin_page(request_user) -> list[tuple[str, str]]:
    """Every page the back office registers: each model's list, its add form where staff may add, and
    one of its rows where there is one, plus the admin's own extra pages."""
    from django.contrib import admin
    from django.test import RequestFactory
    from django.urls import reverse

    request = RequestFactory().get("/admin/")
    request.user = request_user
    pages = []
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        name = f"{meta.app_label}_{meta.model_name}"
        pages.append((f"every-{name}-list", reverse(f"admin:{name}_changelist")))
        if model_admin.has_add_permission(request):
            pages.append((f"every-{name}-add", reverse(f"admin:{name}_add")))
        row = model_admin.get_queryset(request).order_by("pk").first()
        if row is not None:
            pages.append((f"every-{name}-change", reverse(f"admin:{name}_change", args=[row.pk])))
    return pages


def test_every_back_office_page_passes_axe(visitor, live_server):
    """axe-core on every list, add form and change page the admin registers (as a superuser, who sees
    them all), with the same realistic data."""
    _back_office_data(live_server.url)
    superuser = UserFactory(email="root@tollgate.test", is_staff=True, is_superuser=True)
    _admin_log_in(visitor, "root@tollgate.test")
    pages = _every_admin_page(superuser)
    assert len(pages) > 30  # every app's models, not just the ones the billing walk visits
    found = {}
    for name, path in pages:
        visitor.goto(path)
        violations = axe_violations(visitor.page)
        if violations:
            found[name] = format_violations(violations)
    assert not found, "axe-core: critical/serious violations on\n" + "\n".join(f"{n}:\n{t}" for n, t in found.items())
