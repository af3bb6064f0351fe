"""The back office: staff groups, read-only history, adjustments only through the ledger."""

import csv
import importlib
import io
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from metering.models import Price
from payments.models import LedgerEntry, Transfer, Wallet
from tests.factories import UserFactory, service_with_price
from tests.payments.helpers import wallet_tamper


@pytest.fixture(autouse=True)
def _staff_groups(db):
    """The groups come from a data migration; transactional tests elsewhere truncate them, so
    re-run that migration's function (it is idempotent)."""
    from django.apps import apps

    importlib.import_module("metering.migrations.0004_staff_groups_payments").extend_groups(apps, None)


def staff_client(group: str | None = None, *, superuser: bool = False) -> tuple[Client, object]:
    user = UserFactory(is_staff=True, is_superuser=superuser)
    if group:
        user.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(user)
    return client, user


@pytest.mark.parametrize(
    "url",
    [
        "/admin/",
        "/admin/accounts/organization/",
        "/admin/payments/ledgerentry/",
        "/admin/metering/usagerecord/",
        "/admin/metering/service/",
    ],
)
def test_support_can_look(db, organization, url):
    client, _ = staff_client("Support")
    assert client.get(url).status_code == 200


def test_support_cannot_adjust_or_change_prices(db, organization):
    client, _ = staff_client("Support")
    response = client.post(
        "/admin/accounts/organization/",
        {"action": "adjust_balance", "_selected_action": [organization.pk], "apply": "1", "amount": "5", "reason": "nope"},
    )
    assert response.status_code in (200, 302, 403)
    assert not Transfer.objects.exists()
    assert client.get("/admin/metering/price/add/").status_code == 403


def test_billing_admin_adjustment_writes_a_ledger_transfer_with_reason(db, organization):
    client, user = staff_client("Billing admins")
    form = client.post("/admin/accounts/organization/", {"action": "adjust_balance", "_selected_action": [organization.pk]})
    assert form.status_code == 200 and b"reason" in form.content
    response = client.post(
        "/admin/accounts/organization/",
        {"action": "adjust_balance", "_selected_action": [organization.pk], "apply": "1", "amount": "12.5", "reason": "goodwill"},
    )
    assert response.status_code == 302
    transfer = Transfer.objects.get()
    assert (transfer.kind, transfer.memo, transfer.created_by) == ("adjustment", "goodwill", user)
    assert Wallet.objects.get(organization=organization).balance == Decimal("12.5")
    assert sorted(LedgerEntry.objects.values_list("account", flat=True)) == ["adjustments", "wallet"]


def test_adjustment_without_reason_changes_nothing(db, organization):
    client, _ = staff_client("Billing admins")
    client.post(
        "/admin/accounts/organization/",
        {"action": "adjust_balance", "_selected_action": [organization.pk], "apply": "1", "amount": "12.5", "reason": ""},
    )
    assert not Transfer.objects.exists()


def test_ledger_and_usage_are_read_only_in_admin(db, organization):
    client, _ = staff_client(superuser=True)
    for url in ["/admin/payments/ledgerentry/add/", "/admin/metering/usagerecord/add/", "/admin/payments/transfer/add/"]:
        assert client.get(url).status_code == 403


def test_price_history_is_new_rows_only(db):
    service = service_with_price(slug="tts", calc_method="CHAR_COUNT", unit_price="0.015")
    client, user = staff_client("Billing admins")
    old = Price.objects.get()
    assert client.post(f"/admin/metering/price/{old.pk}/change/", {"unit_price": "1"}).status_code == 403
    response = client.post(
        "/admin/metering/price/add/",
        {"service": service.pk, "effective_from_0": "2030-01-01", "effective_from_1": "00:00:00", "unit_price": "0.020"},
    )
    assert response.status_code == 302, response.content[:2000]
    assert Price.objects.count() == 2
    assert Price.objects.get(pk=old.pk).unit_price == Decimal("0.015")
    assert Price.objects.exclude(pk=old.pk).get().created_by == user


def _succeeded_payment(organization, amount="20.00"):
    from payments.models import Payment, WebhookEvent
    from payments.services import payment_settle

    payment = Payment.objects.create(organization=organization, provider="sandbox", amount=Decimal(amount), currency="USD")
    event = WebhookEvent.objects.create(
        provider="sandbox",
        event_id=f"evt_{payment.pk}",
        event_type="payment.succeeded",
        payload={},
        organization=organization,
        payment=payment,
    )
    payment_settle(event_id=event.pk)
    payment.refresh_from_db()
    assert payment.status == "succeeded"
    return payment


def test_billing_admin_refunds_part_of_a_payment(db, organization):
    payment = _succeeded_payment(organization)
    client, user = staff_client("Billing admins")
    response = client.post(
        "/admin/payments/payment/",
        {"action": "refund", "_selected_action": [payment.pk], "apply": "1", "amount": "5", "reason": "unused credit"},
    )
    assert response.status_code == 302
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == ("partially_refunded", Decimal(5))
    wallet = Wallet.objects.get(organization=organization)
    assert (wallet.balance, wallet.held) == (Decimal(15), Decimal(0))
    refund_transfer = Transfer.objects.get(kind="refund")
    assert (refund_transfer.memo, refund_transfer.created_by) == ("unused credit", user)


def test_support_cannot_refund(db, organization):
    payment = _succeeded_payment(organization)
    client, _ = staff_client("Support")
    client.post(
        "/admin/payments/payment/",
        {"action": "refund", "_selected_action": [payment.pk], "apply": "1", "amount": "5", "reason": "x"},
    )
    assert not Transfer.objects.filter(kind="refund").exists()


def test_code_batch_downloads_codes_that_redeem(db, organization, owner_client):
    client, _ = staff_client("Billing admins")
    response = client.post(
        "/admin/payments/redemptioncode/generate/", {"batch": "launch", "amount": "3.00", "count": "4", "max_uses": "1"}
    )
    assert response.status_code == 200 and response["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 5
    code = rows[1][0]
    redeemed = owner_client.post("/api/v1/redeem/", {"code": code}, format="json")
    assert redeemed.status_code == 201, redeemed.content
    assert Wallet.objects.get(organization=organization).balance == Decimal(3)


def test_reconciliation_page_shows_balanced_ledger_and_flags_a_tampered_wallet(db, organization):
    _succeeded_payment(organization)
    client, _ = staff_client("Support")
    page = client.get("/admin/reconciliation/")
    assert page.status_code == 200 and "Balanced" in page.content.decode()

    wallet_tamper(organization.pk, "balance + 1")
    page = client.get("/admin/reconciliation/")
    assert "Mismatch" in page.content.decode()


def test_admin_login_is_throttled_against_guessing(db):
    staff = UserFactory(is_staff=True)
    client = Client()
    for _ in range(5):
        response = client.post("/admin/login/", {"username": staff.email, "password": "wrong"})
        assert b"Too many failed attempts" not in response.content
    locked = client.post("/admin/login/", {"username": staff.email, "password": "correct horse battery staple"})
    assert b"Too many failed attempts" in locked.content
    assert "_auth_user_id" not in client.session


# --- Bugs found in the back office (issue 12) ------------------------------------------------------------


def _price_form(service, **prices) -> dict:
    return {"service": service.pk, "effective_from_0": "2030-01-01", "effective_from_1": "00:00:00", **prices}


def _service_form(service, **price_row) -> dict:
    """The service page with one new price row in its inline."""
    return {
        "slug": service.slug,
        "name": service.name,
        "active": "on",
        "created_at_0": "2026-01-01",
        "created_at_1": "00:00:00",
        "prices-TOTAL_FORMS": "1",
        "prices-INITIAL_FORMS": "0",
        "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000",
        "prices-0-effective_from_0": "2030-01-01",
        "prices-0-effective_from_1": "00:00:00",
        **{f"prices-0-{name}": value for name, value in price_row.items()},
    }


@pytest.mark.parametrize(
    ("calc_method", "prices", "refused"),
    [
        ("REQUEST", {"input_price": "1"}, ["input_price", "unit_price"]),
        ("TOKENS", {"unit_price": "1"}, ["input_price", "output_price", "unit_price"]),
        ("TOKENS", {"input_price": "1"}, ["output_price"]),
        ("CHAR_COUNT", {}, ["unit_price"]),
    ],
)
@pytest.mark.parametrize("page", ["price", "service"])
def test_admin_refuses_a_price_that_does_not_fit_the_services_method(db, page, calc_method, prices, refused):
    """The same rule as the staff API (metering.services.price_create): before the fix such a row saved
    "successfully" and left the service unpriced (price_not_set on every call)."""
    from metering.models import Service

    service = Service.objects.create(slug="svc", name="Svc", calc_method=calc_method)
    client, _ = staff_client("Billing admins")
    if page == "price":
        response = client.post("/admin/metering/price/add/", _price_form(service, **prices))
    else:
        response = client.post(f"/admin/metering/service/{service.pk}/change/", _service_form(service, **prices))
    assert response.status_code == 200, response.status_code  # the form again, with its errors
    assert not Price.objects.exists()
    errors = (
        response.context["adminform"].form.errors
        if page == "price"
        else response.context["inline_admin_formsets"][0].formset.errors[0]
    )
    assert sorted(errors) == refused, errors


@pytest.mark.parametrize("page", ["price", "service"])
def test_admin_saves_a_price_that_fits(db, page):
    from metering.models import Service

    service = Service.objects.create(slug="svc", name="Svc", calc_method="TOKENS")
    client, user = staff_client("Billing admins")
    prices = {"input_price": "2.5", "output_price": "10"}
    if page == "price":
        response = client.post("/admin/metering/price/add/", _price_form(service, **prices))
    else:
        response = client.post(f"/admin/metering/service/{service.pk}/change/", _service_form(service, **prices))
    assert response.status_code == 302, response.content.decode()[:2000]
    price = Price.objects.get()
    assert (price.input_price, price.output_price, price.unit_price, price.created_by) == (
        Decimal("2.5"),
        Decimal(10),
        None,
        user,
    )


def test_admin_shows_zero_amounts_in_plain_digits_never_an_exponent(db, organization):
    """Read-only figures and editable inputs alike: a zero stored as numeric(28,12) is Decimal('0E-12')."""
    client, _ = staff_client("Billing admins")
    for url in [
        f"/admin/accounts/organization/{organization.pk}/change/",
        f"/admin/payments/wallet/{organization.pk}/change/",
        "/admin/accounts/organization/",
        "/admin/payments/wallet/",
    ]:
        page = client.get(url).content.decode()
        assert "E-12" not in page and "e-12" not in page, url


@pytest.mark.parametrize("with_money", [False, True])
def test_deleting_an_organization_is_refused_with_a_clear_message(db, organization, with_money):
    """Never a 500 from the ledger's triggers: an organization's history is kept, so the admin says why."""
    from accounts.models import Organization
    from tests.factories import wallet_fund

    if with_money:
        wallet_fund(organization, "3")
    client, _ = staff_client(superuser=True)
    page = client.get(f"/admin/accounts/organization/{organization.pk}/delete/")
    assert page.status_code in (200, 302, 403)
    response = client.post(f"/admin/accounts/organization/{organization.pk}/delete/", {"post": "yes"}, follow=True)
    assert response.status_code in (200, 403)
    assert Organization.objects.filter(pk=organization.pk).exists()
    assert Wallet.objects.filter(organization=organization).exists()
    if response.status_code == 200:
        assert "cannot be deleted" in response.content.decode()
    bulk = client.post(
        "/admin/accounts/organization/",
        {"action": "delete_selected", "_selected_action": [organization.pk], "post": "yes"},
        follow=True,
    )
    assert bulk.status_code == 200
    assert Organization.objects.filter(pk=organization.pk).exists()


@pytest.mark.parametrize("bulk", [False, True])
def test_deleting_a_user_who_owns_an_organization_is_refused_with_a_clear_message(db, organization, owner, bulk):
    from accounts.models import User

    client, _ = staff_client(superuser=True)
    if bulk:
        response = client.post(
            "/admin/accounts/user/", {"action": "delete_selected", "_selected_action": [owner.pk], "post": "yes"}, follow=True
        )
    else:
        response = client.post(f"/admin/accounts/user/{owner.pk}/delete/", {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert User.objects.filter(pk=owner.pk).exists()
    assert "owns" in response.content.decode()
    assert organization.memberships.filter(user=owner).exists()


def test_deleting_a_user_who_owns_nothing_still_works(db, organization):
    from accounts.models import User

    bystander = UserFactory()
    client, _ = staff_client(superuser=True)
    response = client.post(f"/admin/accounts/user/{bystander.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not User.objects.filter(pk=bystander.pk).exists()


# --- Back office for billing operations (issue 12) --------------------------------------------------------


def _busy_organization(organization, *, events: int = 3):
    """Money in, usage through a named key, an active hold: what the organization page shows."""
    from accounts import services as account_services
    from accounts.models import ApiKey
    from accounts.tenancy import Tenant
    from metering import services as metering_services
    from metering.models import Service
    from tests.factories import wallet_fund

    if not Service.objects.filter(slug="ping").exists():
        service_with_price(slug="ping", calc_method="REQUEST", unit_price="0.0005")
    wallet_fund(organization, "120.50", reason="welcome credit")
    key = account_services.api_key_create(organization=organization, name="Production backend").api_key
    tenant = Tenant(organization=organization, user=None, api_key=ApiKey.objects.get(pk=key.pk), role=None)
    for i in range(events):
        metering_services.usage_record(
            tenant=tenant, event=metering_services.UsageEvent(service="ping", idempotency_key=f"e{i}", data={})
        )
    metering_services.hold_create(
        tenant=tenant, service="ping", idempotency_key="hold", amount=Decimal("2.5"), maxima={}, expires_in=None
    )
    return key


def test_organization_page_is_a_customer_hub(db, organization):
    _busy_organization(organization)
    client, _ = staff_client("Billing admins")
    page = client.get(f"/admin/accounts/organization/{organization.pk}/change/").content.decode()
    assert "Adjust balance" in page and f"/admin/accounts/organization/{organization.pk}/adjust/" in page
    assert "$120.50" in page  # the balance, with its currency's decimals; the exact figure on hover
    assert 'title="120.4985 USD"' in page
    assert "welcome credit" in page and "Production backend" in page and "$0.0005" in page and "$2.50" in page
    for changelist in ["payments/ledgerentry", "payments/payment", "metering/usagerecord", "metering/hold"]:
        assert f"/admin/{changelist}/?organization={organization.slug}" in page


def test_support_sees_the_hub_but_cannot_adjust(db, organization):
    _busy_organization(organization, events=1)
    client, _ = staff_client("Support")
    page = client.get(f"/admin/accounts/organization/{organization.pk}/change/")
    assert page.status_code == 200 and "welcome credit" in page.content.decode()
    assert "Adjust balance" not in page.content.decode()
    refused = client.post(f"/admin/accounts/organization/{organization.pk}/adjust/", {"amount": "5", "reason": "x"})
    assert refused.status_code == 403
    assert Transfer.objects.filter(kind="adjustment").count() == 1  # only the welcome credit


def test_adjust_balance_button_posts_an_adjustment_through_the_ledger(db, organization):
    client, user = staff_client("Billing admins")
    url = f"/admin/accounts/organization/{organization.pk}/adjust/"
    form = client.get(url).content.decode()
    assert '<label for="id_amount"' in form and '<label for="id_reason"' in form
    assert client.post(url, {"amount": "-1", "reason": "too much"}).status_code == 200  # refused: below the limit
    assert not Transfer.objects.exists()
    response = client.post(url, {"amount": "7.25", "reason": "goodwill"}, follow=True)
    assert response.redirect_chain[-1][0] == f"/admin/accounts/organization/{organization.pk}/change/"
    assert "balance is now $7.25" in response.content.decode()
    transfer = Transfer.objects.get()
    assert (transfer.kind, transfer.memo, transfer.created_by) == ("adjustment", "goodwill", user)
    assert Wallet.objects.get(organization=organization).balance == Decimal("7.25")


def test_organizations_filter_by_balance(db, organization, other_organization):
    from payments import ledger, services

    ledger.wallet_adjust(organization_id=organization.pk, amount=Decimal(5), reason="x", created_by_id=None)
    services.wallet_settings_update(
        organization_id=other_organization.pk, credit_limit=Decimal(10), low_balance_threshold=Decimal(1)
    )
    ledger.wallet_adjust(organization_id=other_organization.pk, amount=Decimal(-3), reason="postpaid", created_by_id=None)
    client, _ = staff_client("Support")

    def listed(balance: str) -> set[str]:
        changelist = client.get("/admin/accounts/organization/", {"balance": balance}).context["cl"]
        return {o.slug for o in changelist.result_list}

    assert listed("negative") == {other_organization.slug}
    assert listed("low") == {other_organization.slug}
    assert listed("positive") == {organization.slug}


@pytest.mark.parametrize(
    "changelist", ["metering/usagerecord", "payments/ledgerentry", "payments/transfer", "metering/hold", "metering/usagerollup"]
)
def test_big_tables_filter_by_organization(db, organization, other_organization, changelist):
    _busy_organization(organization, events=2)
    from tests.factories import wallet_fund

    wallet_fund(other_organization, "1")
    client, _ = staff_client("Support")
    response = client.get(f"/admin/{changelist}/", {"organization": organization.slug})
    rows = response.context["cl"].result_list
    assert rows and {row.organization_id for row in rows} == {organization.pk}
    page = response.content.decode()
    assert '<label for="organization-filter-slug">' in page and f'value="{organization.slug}"' in page
    assert not client.get(f"/admin/{changelist}/", {"organization": "nobody"}).context["cl"].result_list


def test_usage_shows_api_keys_by_name_and_costs_with_currency(db, organization):
    _busy_organization(organization, events=1)
    client, _ = staff_client("Support")
    page = client.get("/admin/metering/usagerecord/").content.decode()
    assert "Production backend" in page and "$0.0005" in page


@pytest.mark.parametrize(
    "changelist",
    [
        "accounts/organization",
        "payments/wallet",
        "payments/ledgerentry",
        "payments/transfer",
        "payments/payment",
        "metering/usagerecord",
        "metering/usagerollup",
        "metering/hold",
    ],
)
def test_changelists_cost_the_same_queries_for_many_rows(db, organization, django_assert_max_num_queries, changelist):
    """No query per row (the organization's wallet, the key, the service come with the page) and no full count."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _busy_organization(organization, events=2)
    client, _ = staff_client("Support")
    with CaptureQueriesContext(connection) as few:
        client.get(f"/admin/{changelist}/")
    _busy_organization(organization_create_named("Second"), events=12)
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert client.get(f"/admin/{changelist}/").status_code == 200


def organization_create_named(name: str):
    from tests.factories import organization_create

    return organization_create(name=name)


def test_admin_index_shows_key_figures_and_payments_needing_attention(db, organization):
    from datetime import timedelta

    from django.utils import timezone

    from payments.models import Payment, Refund

    _busy_organization(organization, events=4)
    paid = _succeeded_payment(organization, "20.00")
    stale = Payment.objects.create(
        organization=organization,
        provider="sandbox",
        amount=Decimal(30),
        currency="USD",
        created_at=timezone.now() - timedelta(hours=3),
    )
    fresh = Payment.objects.create(organization=organization, provider="sandbox", amount=Decimal(31), currency="USD")
    failed = Payment.objects.create(
        organization=organization,
        provider="sandbox",
        amount=Decimal(50),
        currency="USD",
        status="failed",
        failure_reason="declined",
    )
    refund = Refund.objects.create(organization=organization, payment=paid, amount=Decimal(5), reason="unused")
    client, _ = staff_client("Support")
    page = client.get("/admin/").content.decode()
    assert "Revenue today" in page and 'title="0.002 USD">$0.00<' in page  # 4 requests at $0.0005: cents, exact on hover
    assert "Recharges today" in page and "$20.00" in page
    assert "Active organizations" in page
    assert f"/admin/payments/payment/{stale.pk}/change/" in page and f"/admin/payments/payment/{fresh.pk}/change/" not in page
    assert f"/admin/payments/payment/{failed.pk}/change/" in page and "declined" in page
    assert f"Refund #{refund.pk}" in page
    assert "Not run yet" in page
    client.get("/admin/reconciliation/")
    assert "✅ Balanced" in client.get("/admin/").content.decode()


def test_admin_index_hides_billing_figures_from_staff_without_payment_rights(db):
    client, _ = staff_client()
    page = client.get("/admin/").content.decode()
    assert "Revenue today" not in page


def _organization_with_members_form(organization, memberships: list, **changes) -> dict:
    """The organization's change form as the admin renders it, with `changes` applied to the
    membership rows (e.g. `{"memberships-0-DELETE": "on"}`)."""
    from tests.payments.test_wallet_guard import _management, _wallet_form

    data = {
        "name": organization.name,
        "slug": organization.slug,
        **_management("wallet", total=1, initial=1, maximum=1),
        "wallet-0-organization": str(organization.pk),
        **{f"wallet-0-{name}": value for name, value in _wallet_form(organization).items()},
        **_management("memberships", total=len(memberships), initial=len(memberships)),
        **_management("api_keys", total=0, initial=0),
    }
    for i, membership in enumerate(memberships):
        data.update(
            {
                f"memberships-{i}-id": str(membership.pk),
                f"memberships-{i}-organization": str(organization.pk),
                f"memberships-{i}-user": str(membership.user_id),
                f"memberships-{i}-role": membership.role,
                f"memberships-{i}-created_at_0": f"{membership.created_at:%Y-%m-%d}",
                f"memberships-{i}-created_at_1": f"{membership.created_at:%H:%M:%S}",
            }
        )
    return {**data, **changes}


@pytest.mark.parametrize("change", [{"memberships-0-DELETE": "on"}, {"memberships-0-role": "admin"}])
def test_admin_refuses_to_remove_or_demote_the_last_owner(db, organization, owner, change):
    """The membership inline keeps the team services' rule: an organization always keeps an owner."""
    from accounts.models import Membership, Role

    ownership = Membership.objects.get(organization=organization, user=owner)
    client, _ = staff_client(superuser=True)
    response = client.post(
        f"/admin/accounts/organization/{organization.pk}/change/",
        _organization_with_members_form(organization, [ownership], **change),
    )
    assert response.status_code == 200  # the form again, with the error
    assert "always keeps at least one owner" in response.content.decode()
    ownership.refresh_from_db()
    assert ownership.role == Role.OWNER


def test_admin_lets_staff_demote_an_owner_once_another_owns_the_organization(db, organization, owner):
    from accounts.models import Membership, Role

    other = organization.memberships.create(user=UserFactory(), role=Role.MEMBER)
    ownership = Membership.objects.get(organization=organization, user=owner)
    client, _ = staff_client(superuser=True)
    response = client.post(
        f"/admin/accounts/organization/{organization.pk}/change/",
        _organization_with_members_form(
            organization, [ownership, other], **{"memberships-0-role": "admin", "memberships-1-role": "owner"}
        ),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert dict(Membership.objects.filter(organization=organization).values_list("pk", "role")) == {
        ownership.pk: Role.ADMIN,
        other.pk: Role.OWNER,
    }
