"""A wallet's balance and holds change only through the ledger (docs/contract.md §2.2): the database refuses any
other write, and the back office changes settings without ever writing a stale balance back."""

from decimal import Decimal

import pytest
from django.contrib.admin.sites import site
from django.db import IntegrityError, connection, transaction
from django.test import Client

from payments import ledger
from payments.admin import WalletAdmin
from payments.models import Wallet, WalletStripe
from payments.services import wallet_settings_update
from tests.concurrency import run_concurrently
from tests.factories import UserFactory, organization_create, wallet_fund
from tests.payments.helpers import assert_money_invariants, wallet_of

D = Decimal


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE payments_wallet SET balance = balance + 1 WHERE organization_id = %s",
        "UPDATE payments_wallet SET held = held + 1 WHERE organization_id = %s",
        "UPDATE payments_wallet SET balance = 0, ledger_seq = ledger_seq + 2 WHERE organization_id = %s",
        "UPDATE payments_wallet SET balance = 0, ledger_seq = 0 WHERE organization_id = %s",
    ],
)
def test_database_refuses_balance_or_held_writes_outside_the_ledger(organization, statement):
    wallet_fund(organization, "5")
    with pytest.raises(IntegrityError, match="only through the ledger"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, [organization.pk])
    assert wallet_of(organization).balance == D(5)


def test_database_refuses_a_wallet_that_opens_with_money(db):
    organization = organization_create(name="Fresh")
    with pytest.raises(IntegrityError, match="only through the ledger"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM payments_wallet WHERE organization_id = %s", [organization.pk])
        cursor.execute(
            "INSERT INTO payments_wallet (organization_id, currency, balance, held, credit_limit, low_balance_threshold,"
            " low_balance_alerted, alert_webhook_url, ledger_seq) VALUES (%s, 'USD', 100, 0, 0, 0, false, '', 0)",
            [organization.pk],
        )


def test_settings_writes_pass_and_ledger_writes_bump_the_sequence(organization):
    before = wallet_of(organization).ledger_seq
    wallet_fund(organization, "5")
    ledger.wallet_hold(usage=True, organization_id=organization.pk, amount=D(1))
    wallet_settings_update(organization_id=organization.pk, credit_limit=D(2), low_balance_threshold=D(1))
    wallet = wallet_of(organization)
    assert (wallet.balance, wallet.held, wallet.credit_limit, wallet.low_balance_threshold) == (D(5), D(1), D(2), D(1))
    assert wallet.ledger_seq == before + 2


def test_a_whole_wallet_save_is_refused_by_the_model(organization):
    wallet = wallet_of(organization)
    wallet.credit_limit = D(3)
    with pytest.raises(RuntimeError, match="never saved whole"):
        wallet.save()
    with pytest.raises(RuntimeError):
        wallet.save(update_fields=["balance"])


@pytest.mark.parametrize("bad", [D(-1), D("NaN")])
def test_wallet_settings_refuse_negative_or_odd_amounts(organization, bad):
    from billing_site.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        wallet_settings_update(organization_id=organization.pk, credit_limit=bad)


def _staff_client() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def _wallet_form(organization, **changes) -> dict:
    wallet = wallet_of(organization)
    return {
        "credit_limit": str(wallet.credit_limit),
        "low_balance_threshold": str(wallet.low_balance_threshold),
        "stripes": str(wallet.stripes),
        **changes,
    }


def _management(prefix: str, *, total: int, initial: int, maximum: int = 1000) -> dict:
    """An admin inline formset's management fields."""
    return {
        f"{prefix}-TOTAL_FORMS": str(total),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": str(maximum),
    }


def _organization_form(organization, **wallet_changes) -> dict:
    return {
        "name": organization.name,
        "slug": organization.slug,
        **_management("wallet", total=1, initial=1, maximum=1),
        "wallet-0-organization": str(organization.pk),
        **{f"wallet-0-{name}": value for name, value in _wallet_form(organization, **wallet_changes).items()},
        **_management("memberships", total=0, initial=0),
        **_management("api_keys", total=0, initial=0),
    }


def race_before_admin_save(monkeypatch, admin_class, race) -> None:
    """Make the admin's POST run `race` on another connection (a real thread, joined with a timeout)
    between loading the object and saving it, as a debit or a revocation committing meanwhile would."""
    original = admin_class.get_object

    def get_object_then_race(self, request, object_id, from_field=None):
        obj = original(self, request, object_id, from_field)
        if request.method == "POST":
            [outcome] = run_concurrently(1, lambda _: race())
            if isinstance(outcome, BaseException):
                raise outcome
        return obj

    monkeypatch.setattr(admin_class, "get_object", get_object_then_race)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("page", ["wallet", "organization"])
def test_admin_save_racing_a_debit_never_writes_the_old_balance_back(page, monkeypatch):
    """The admin loads the wallet, a debit commits on another connection, then the admin saves: the
    debit must survive (before the fix the whole row, stale balance included, was written back)."""
    organization = organization_create(name="Raced")
    wallet_fund(organization, "10")
    admin_class = WalletAdmin if page == "wallet" else type(site._registry[type(organization)])
    race_before_admin_save(
        monkeypatch, admin_class, lambda: ledger.usage_charge(organization_id=organization.pk, cost=D("0.087"), reference="race")
    )
    if page == "wallet":
        url, data = f"/admin/payments/wallet/{organization.pk}/change/", _wallet_form(organization, credit_limit="4")
    else:
        url, data = f"/admin/accounts/organization/{organization.pk}/change/", _organization_form(organization, credit_limit="4")

    response = _staff_client().post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    wallet = wallet_of(organization)
    assert (wallet.balance, wallet.credit_limit) == (D("9.913"), D(4))
    assert_money_invariants([organization.pk])


@pytest.mark.django_db(transaction=True)
def test_admin_key_edit_racing_a_debit_and_a_revocation_writes_neither_back(monkeypatch):
    """Staff change a key's cap on the organization page while, on other connections, the key spends
    and its owner revokes it: the spend and the revocation survive the admin's save."""
    from accounts import services as account_services
    from accounts.models import ApiKey
    from accounts.tenancy import Tenant
    from metering import services as metering_services
    from metering.models import CalcMethod
    from tests.factories import service_with_price

    service_with_price(slug="ping", calc_method=CalcMethod.REQUEST, unit_price="1")
    organization = organization_create(name="Keys")
    wallet_fund(organization, "10")
    key = account_services.api_key_create(organization=organization, name="k", spend_cap=D(3)).api_key

    def spend_and_revoke() -> None:
        tenant = Tenant(organization=organization, user=None, api_key=ApiKey.objects.get(pk=key.pk), role=None)
        metering_services.usage_record(
            tenant=tenant, event=metering_services.UsageEvent(service="ping", idempotency_key="r", data={})
        )
        account_services.api_key_revoke(api_key=ApiKey.objects.get(pk=key.pk))

    race_before_admin_save(monkeypatch, type(site._registry[type(organization)]), spend_and_revoke)

    data = _organization_form(organization)
    data.update(
        {
            **_management("api_keys", total=1, initial=1),
            "api_keys-0-id": str(key.pk),
            "api_keys-0-organization": str(organization.pk),
            "api_keys-0-expires_at_0": "",
            "api_keys-0-expires_at_1": "",
            "api_keys-0-spend_cap": "5",
        }
    )
    response = _staff_client().post(f"/admin/accounts/organization/{organization.pk}/change/", data)

    assert response.status_code == 302, response.content.decode()[:3000]
    key.refresh_from_db()
    assert (key.spend_cap, key.spent) == (D(5), D(1))
    assert key.revoked_at is not None
    assert wallet_of(organization).balance == D(9)


def test_an_organization_added_in_the_back_office_opens_its_wallet_with_the_settings_given(db):
    data = {
        "name": "Walk-in",
        "slug": "walk-in",
        **_management("wallet", total=1, initial=0, maximum=1),
        "wallet-0-credit_limit": "7",
        "wallet-0-low_balance_threshold": "2",
        **_management("memberships", total=0, initial=0),
        **_management("api_keys", total=0, initial=0),
    }
    response = _staff_client().post("/admin/accounts/organization/add/", data)

    assert response.status_code == 302, response.content.decode()[:3000]
    wallet = Wallet.objects.get(organization__slug="walk-in")
    assert (wallet.balance, wallet.held, wallet.credit_limit, wallet.low_balance_threshold) == (D(0), D(0), D(7), D(2))


@pytest.mark.parametrize("page", ["wallet", "organization"])
def test_staff_turn_striping_on_and_off_in_the_admin_and_the_money_moves_exactly(organization, page):
    wallet_fund(organization, "10")
    client = _staff_client()

    def save(**changes) -> None:
        if page == "wallet":
            url, data = f"/admin/payments/wallet/{organization.pk}/change/", _wallet_form(organization, **changes)
        else:
            url, data = f"/admin/accounts/organization/{organization.pk}/change/", _organization_form(organization, **changes)
        response = client.post(url, data)
        assert response.status_code == 302, response.content.decode()[:2000]

    save(stripes="4")
    assert (wallet_of(organization).stripes, wallet_of(organization).balance) == (4, D(10))
    assert WalletStripe.objects.filter(organization_id=organization.pk).count() == 4
    save(credit_limit="1")  # another setting, posted with the stripe count as the page shows it: stays striped
    assert wallet_of(organization).stripes == 4
    save(stripes="0")
    assert (wallet_of(organization).stripes, wallet_of(organization).balance) == (0, D(10))
    assert not WalletStripe.objects.filter(organization_id=organization.pk).exists()
    assert_money_invariants([organization.pk])
