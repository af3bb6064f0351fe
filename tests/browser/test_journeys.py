"""What a customer and a staff member do, end to end in headless Chromium against the live server."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal

import pytest
import requests
from django.core import mail
from playwright.sync_api import expect

from accounts.models import Membership, Organization, Role
from metering.models import CalcMethod, Price
from payments.models import Payment, PaymentStatus, Wallet
from tests.browser.helpers import log_in
from tests.factories import UserFactory, organization_create, service_with_price

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_sign_up_recharge_create_key_meter_and_see_usage(visitor_factory, live_server, eager_settlement):
    service_with_price(slug="gpt-4o", calc_method=CalcMethod.TOKENS, input_price="2.50", output_price="10.00")
    visitor = visitor_factory()
    page = visitor.page

    # Sign up: the organization is created, and after logging in the person lands on its overview.
    visitor.goto("/signup/")
    page.get_by_label("Email").fill("founder@example.com")
    page.get_by_label("Password").fill("a long and unusual passphrase")
    page.get_by_label("Organization name").fill("Founders Inc")
    visitor.shot("journey-01-signup")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url("**/login/")
    expect(page.get_by_role("status")).to_contain_text("your account is ready")
    log_in(visitor, "founder@example.com", "a long and unusual passphrase")
    expect(page.get_by_test_id("balance")).to_have_text("$0.00")
    visitor.shot("journey-02-overview-empty")
    organization = Organization.objects.get(name="Founders Inc")

    # Recharge through the sandbox checkout.
    page.get_by_role("link", name="Billing").click()
    page.get_by_label("USD").fill("20")
    visitor.shot("journey-03-billing")
    page.get_by_role("button", name="Continue to checkout").click()
    page.wait_for_url("**/sandbox/checkout/**")
    visitor.shot("journey-04-sandbox-checkout")
    payment = Payment.objects.get(organization=organization)
    assert payment.status == PaymentStatus.PENDING

    # The payment page is open in another tab while the payer confirms: it must update by itself.
    watcher = visitor.context.new_page()
    watcher.goto(f"/dashboard/payments/{payment.pk}/?result=success")
    expect(watcher.get_by_test_id("payment-status")).to_have_text("Pending")
    page.get_by_role("button", name=re.compile(r"^Pay 20(\.00)? USD")).click()
    expect(page.locator("#result")).to_contain_text("sent")
    expect(watcher.get_by_test_id("payment-status")).to_have_text("Succeeded", timeout=10_000)
    expect(watcher.get_by_test_id("balance")).to_have_text("$20.00")
    visitor.shot("journey-05-payment-settled", page=watcher)
    watcher.close()
    assert Wallet.objects.get(pk=organization.pk).balance == Decimal("20")

    # Create a live API key: the secret is shown once.
    visitor.goto("/dashboard/keys/")
    page.get_by_label("Name").fill("Backend")
    page.get_by_role("button", name="Create key").last.click()
    secret = page.get_by_test_id("secret").inner_text().strip()
    assert secret.startswith("tg_live_")
    visitor.shot("journey-06-key-created")
    page.get_by_role("link", name="Done").click()
    expect(page.get_by_test_id("keys-table")).to_contain_text("Backend")
    assert secret not in page.content()

    # Meter usage through the API with that key.
    response = requests.post(
        f"{live_server.url}/api/v1/usage/",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
        json={"service": "gpt-4o", "input_tokens": 1000, "output_tokens": 500, "idempotency_key": "first-call"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["cost"] == "0.007500000000"

    # See it in the dashboard: usage table, CSV export, overview totals.
    visitor.goto("/dashboard/usage/")
    table = page.get_by_test_id("usage-table")
    expect(table).to_contain_text("gpt-4o")
    expect(table).to_contain_text("$0.0075")
    visitor.shot("journey-07-usage")
    with page.expect_download() as download:
        page.get_by_test_id("export").click()
    rows = list(csv.DictReader(io.StringIO(download.value.path().read_text())))
    assert [(r["service"], r["cost"], r["mode"]) for r in rows] == [("gpt-4o", "0.007500000000", "live")]
    visitor.goto("/dashboard/")
    # Totals and balances in cents, the exact figure on hover.
    expect(page.get_by_test_id("spend-today")).to_have_text("$0.01")
    expect(page.get_by_test_id("spend-today").locator(".money")).to_have_attribute("title", "0.0075 USD")
    expect(page.get_by_test_id("balance")).to_have_text("$19.99")
    expect(page.get_by_test_id("balance").locator(".money")).to_have_attribute("title", "19.9925 USD")
    visitor.shot("journey-08-overview")


def test_owner_invites_a_member_who_signs_up_and_joins(visitor_factory, live_server, settings):
    owner = UserFactory(email="owner@example.com")
    organization = organization_create(name="Acme Robotics", owner=owner)
    owner_visit = visitor_factory()
    log_in(owner_visit, owner.email)
    owner_visit.goto("/dashboard/team/")
    owner_visit.page.get_by_test_id("invite-form").get_by_label("Email").fill("new.hire@example.com")
    owner_visit.page.get_by_test_id("invite-form").get_by_label("Role").select_option("admin")
    owner_visit.page.get_by_role("button", name="Send invitation").click()
    expect(owner_visit.page.get_by_test_id("invitations-table")).to_contain_text("new.hire@example.com")
    owner_visit.shot("invite-01-sent")

    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["new.hire@example.com"]
    link = re.search(r"https?://\S+/invite/\S+/", mail.outbox[0].body).group(0)

    invitee = visitor_factory()
    invitee.goto(link)
    expect(invitee.page.get_by_role("heading", name="Join Acme Robotics")).to_be_visible()
    invitee.shot("invite-02-accept")
    invitee.page.get_by_label("Name").fill("New Hire")
    invitee.page.get_by_label("Password").fill("another long passphrase")
    invitee.page.get_by_role("button", name="Create account and join").click()
    invitee.page.wait_for_url("**/dashboard/")
    expect(invitee.page.locator(".flash-success")).to_contain_text("You joined Acme Robotics as admin")
    assert Membership.objects.get(organization=organization, user__email="new.hire@example.com").role == Role.ADMIN

    # The owner sees the new admin and makes them a member (the select submits itself).
    owner_visit.goto("/dashboard/team/")
    members = owner_visit.page.get_by_test_id("members-table")
    expect(members).to_contain_text("New Hire")
    member_id = Membership.objects.get(organization=organization, user__email="new.hire@example.com").pk
    owner_visit.page.locator(f"#role-{member_id}").select_option("member")
    expect(owner_visit.page.locator(".flash-success")).to_contain_text("is now member")
    owner_visit.shot("invite-03-team")
    assert Membership.objects.get(pk=member_id).role == Role.MEMBER


def test_staff_changes_a_price_in_the_admin_and_customers_see_it(visitor_factory, live_server):
    service = service_with_price(slug="translate", calc_method=CalcMethod.CHAR_COUNT, unit_price="0.02")
    staff = UserFactory(email="staff@tollgate.example", is_staff=True, is_superuser=True)
    customer = UserFactory(email="customer@example.com")
    organization_create(name="Polyglot", owner=customer)

    admin = visitor_factory()
    admin.goto("/admin/login/")
    admin.page.get_by_label("Email").fill(staff.email)
    admin.page.get_by_label("Password").fill("correct horse battery staple")
    admin.page.get_by_role("button", name="Log in").click()
    admin.goto(f"/admin/metering/service/{service.pk}/change/")
    new_row = admin.page.locator("tr.form-row:not(.has_original):not(.empty-form)").first
    new_row.locator("input[name$='-unit_price']").fill("0.025")
    admin.shot("admin-01-price-inline")
    admin.page.get_by_role("button", name="Save", exact=True).click()
    expect(admin.page.locator(".messagelist")).to_contain_text("was changed successfully")
    admin.shot("admin-02-saved")
    prices = list(Price.objects.filter(service=service).order_by("effective_from", "id").values_list("unit_price", flat=True))
    assert prices == [Decimal("0.02"), Decimal("0.025")]

    shopper = visitor_factory()
    log_in(shopper, customer.email)
    shopper.goto("/dashboard/pricing/")
    expect(shopper.page.get_by_test_id("rate-translate-unit_price")).to_contain_text("$0.025")
    shopper.shot("admin-03-customer-pricing")
