"""Low-balance alerts: one per crossing of the threshold, queued after the debit commits, re-armed by
a top-up; an alert that cannot be sent never fails the debit."""

import json
import socket
from decimal import Decimal

import pytest
from django.core import mail
from django.db import transaction
from kombu.exceptions import OperationalError

from dashboard import services as dashboard_services
from payments import ledger, tasks
from payments.models import LedgerEntry, Wallet
from tests.dashboard.conftest import client_for
from tests.factories import UserFactory, service_with_price, wallet_fund
from tests.payments.helpers import assert_money_invariants, wallet_of
from tests.payments.payment_helpers import hmac_signature

D = Decimal
pytestmark = pytest.mark.usefixtures("eager_celery")


@pytest.fixture
def armed(organization, owner, org_admin, member):
    """A wallet at 100 with a threshold of 50; an owner, an admin and a member."""
    wallet_fund(organization, "100")
    Wallet.objects.filter(organization_id=organization.pk).update(low_balance_threshold=D("50"))
    mail.outbox.clear()
    return organization


def debit(organization, cost: str) -> ledger.Posting:
    return ledger.usage_charge(organization_id=organization.pk, cost=D(cost), reference=f"usage-{cost}")


def debit_through_the_api(organization, cost: str):
    from accounts import services as account_services
    from tests.conftest import key_client

    service_with_price(slug=f"alert-{cost.replace('.', '-')}", unit_price=cost)
    key = account_services.api_key_create(organization=organization, name="alerts")

    def act() -> None:
        response = key_client(key.secret).post(
            "/api/v1/usage/", {"service": f"alert-{cost.replace('.', '-')}", "idempotency_key": f"alert-{cost}"}, format="json"
        )
        assert response.status_code == 201, response.content

    return act


def debit_in_a_batch(organization, cost: str):
    def act() -> None:
        with transaction.atomic():
            [posting] = ledger.usage_charge_batch(organization_id=organization.pk, costs=[D(cost)], reference=f"batch-{cost}")
        assert posting is not None

    return act


# Each arranges what its debit needs (a priced service and a key for the API) and answers the debit itself.
DEBITS = {
    "ledger": lambda organization, cost: lambda: debit(organization, cost),
    "usage API": debit_through_the_api,
    "usage batch": debit_in_a_batch,
}


@pytest.mark.parametrize("spend", DEBITS.values(), ids=DEBITS.keys())
def test_a_debit_crossing_the_threshold_emails_the_owners_and_admins_once(
    armed, owner, org_admin, member, spend, django_capture_on_commit_callbacks
):
    act = spend(armed, "60")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        act()

    assert len(callbacks) == 1  # queued after commit
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert sorted(message.to) == sorted([owner.email, org_admin.email])
    assert member.email not in message.to
    assert "50" in message.subject and "40" in message.body
    wallet = wallet_of(armed)
    assert wallet.balance == D("40") and wallet.low_balance_alerted is True


def alert_webhook_set(organization, url: str) -> None:
    Wallet.objects.filter(organization_id=organization.pk).update(alert_webhook_url=url)


@pytest.fixture
def local_receivers(settings, public_dns):
    """The suite's receivers are real HTTP servers on 127.0.0.1, known as hooks.example.com; only
    ALERT_WEBHOOK_ALLOW_PRIVATE lets an alert reach them, so only the delivery tests turn it on."""
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    public_dns["hooks.example.com"] = ["127.0.0.1"]


def signed_with(request, secret: str) -> bool:
    header = request.headers["Tollgate-Signature"]
    timestamp = int(header.split(",")[0].removeprefix("t="))
    return header == hmac_signature(request.body, secret=secret, timestamp=timestamp)


@pytest.mark.usefixtures("local_receivers")
def test_the_alert_webhook_gets_one_post_signed_with_the_organizations_secret(
    armed, other_organization, hook_server, django_capture_on_commit_callbacks
):
    receiver = hook_server()
    alert_webhook_set(armed, receiver.url("/tollgate/low-balance", host="hooks.example.com"))

    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "60")

    [request] = receiver.requests
    body = json.loads(request.body)
    assert (request.method, request.path, body["type"], body["organization"]) == (
        "POST",
        "/tollgate/low-balance",
        "balance.low",
        armed.slug,
    )
    assert (D(body["balance"]), D(body["threshold"]), body["currency"]) == (D("40"), D("50"), "USD")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Host"] == f"hooks.example.com:{receiver.port}"
    secret, others = wallet_of(armed).alert_signing_secret, wallet_of(other_organization).alert_signing_secret
    assert secret and others and secret != others
    assert signed_with(request, secret) and not signed_with(request, others)
    assert len(mail.outbox) == 1


@pytest.mark.usefixtures("local_receivers")
def test_a_rotated_secret_signs_the_next_alert(armed, hook_server, django_capture_on_commit_callbacks):
    receiver = hook_server()
    alert_webhook_set(armed, receiver.url(host="hooks.example.com"))
    old = wallet_of(armed).alert_signing_secret

    new = dashboard_services.wallet_alert_secret_rotate(organization_id=armed.pk)
    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "60")

    assert new != old and wallet_of(armed).alert_signing_secret == new
    [request] = receiver.requests
    assert signed_with(request, new) and not signed_with(request, old)


@pytest.mark.usefixtures("local_receivers")
def test_further_debits_below_the_threshold_send_nothing(armed, hook_server, django_capture_on_commit_callbacks):
    receiver = hook_server(status=200)
    alert_webhook_set(armed, receiver.url(host="hooks.example.com"))
    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "60")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        debit(armed, "5")
        debit(armed, "5")

    assert callbacks == []  # the ledger knows the alert went out: nothing is even queued
    assert len(mail.outbox) == 1
    assert len(receiver.requests) == 1
    assert wallet_of(armed).balance == D("30")


# --- The webhook URL is the organization's choice: it never reaches into our own network -----------------


@pytest.mark.parametrize(
    ("listen", "host"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", "localhost"),
        ("127.0.0.1", "[::ffff:127.0.0.1]"),
        ("127.0.0.1", "2130706433"),
        ("127.0.0.1", "127.1"),
        ("127.0.0.1", "0.0.0.0"),
        ("::1", "[::1]"),
        ("127.0.0.1", "hooks.example.com"),  # a public-looking name whose DNS answers loopback
    ],
)
def test_an_alert_webhook_into_our_own_network_is_never_called(
    armed, hook_server, public_dns, listen, host, caplog, django_capture_on_commit_callbacks
):
    public_dns["hooks.example.com"] = ["127.0.0.1"]
    private = hook_server(listen)
    alert_webhook_set(armed, private.url(host=host))

    with django_capture_on_commit_callbacks(execute=True):
        posting = debit(armed, "60")

    assert private.requests == []
    assert posting.balance_after == D("40") and wallet_of(armed).low_balance_alerted is True
    assert len(mail.outbox) == 1  # the people are still told
    assert "refused" in caplog.text


def test_a_url_that_was_public_when_saved_is_checked_again_when_sent(
    armed, owner, hook_server, public_dns, django_capture_on_commit_callbacks
):
    private = hook_server()
    public_dns["hooks.example.com"] = ["93.184.215.14"]
    saved = client_for(owner).post(
        "/dashboard/settings/", {"low_balance_threshold": "50", "alert_webhook_url": private.url(host="hooks.example.com")}
    )
    assert saved.status_code == 302
    public_dns["hooks.example.com"] = ["127.0.0.1"]  # DNS rebinding: the name now answers loopback

    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "60")

    assert private.requests == []


@pytest.mark.usefixtures("local_receivers")
def test_a_host_name_that_does_not_resolve_yet_is_tried_again(
    armed, hook_server, public_dns, monkeypatch, django_capture_on_commit_callbacks
):
    receiver = hook_server()
    alert_webhook_set(armed, receiver.url(host="flaky.example"))
    answers = iter([[], ["127.0.0.1"]])  # the first lookup fails (a DNS hiccup), the next one answers
    resolve = socket.getaddrinfo

    def flaky(host, *args, **kwargs):
        if host == "flaky.example":
            public_dns[host] = next(answers)
            if not public_dns[host]:
                raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", flaky)
    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "60")

    assert len(receiver.requests) == 1


@pytest.mark.usefixtures("local_receivers")
def test_a_receiver_that_redirects_is_not_followed(armed, hook_server, django_capture_on_commit_callbacks):
    """Even with private addresses allowed, a redirect (here to another local server) is never followed."""
    private = hook_server()
    redirecting = hook_server(status=307, headers={"Location": private.url("/stolen")})
    alert_webhook_set(armed, redirecting.url(host="hooks.example.com"))

    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "60")

    assert len(redirecting.requests) >= 1  # a redirect is a failed delivery: retried, never followed
    assert private.requests == []
    assert len(mail.outbox) == 1


def test_debits_that_stay_above_the_threshold_send_nothing(armed, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        debit(armed, "50")  # lands exactly on the threshold: not below it

    assert callbacks == []
    assert mail.outbox == []
    assert wallet_of(armed).low_balance_alerted is False


def test_a_wallet_without_a_threshold_never_alerts(organization, owner, django_capture_on_commit_callbacks):
    wallet_fund(organization, "10")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        debit(organization, "10")

    assert callbacks == []
    assert mail.outbox == []


def test_a_top_up_above_the_threshold_re_arms_the_alert(armed, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "60")
        wallet_fund(armed, "5")  # 45: still below, stays disarmed
    assert wallet_of(armed).low_balance_alerted is True
    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "1")
    assert len(mail.outbox) == 1

    with django_capture_on_commit_callbacks(execute=True):
        wallet_fund(armed, "6")  # back to 50: re-armed
    assert wallet_of(armed).low_balance_alerted is False
    with django_capture_on_commit_callbacks(execute=True):
        debit(armed, "0.000000000001")

    assert len(mail.outbox) == 2
    assert wallet_of(armed).low_balance_alerted is True
    assert_money_invariants([armed.pk])


def test_many_debits_that_saw_the_crossing_alert_once(armed, django_capture_on_commit_callbacks):
    """Several debits may commit before the first alert task runs; only one alert goes out."""
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        debit(armed, "60")
        debit(armed, "1")
        debit(armed, "1")

    assert len(callbacks) == 3
    for callback in callbacks:
        callback()
    assert len(mail.outbox) == 1


def test_a_broker_outage_does_not_fail_the_debit(armed, monkeypatch, django_capture_on_commit_callbacks):
    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to the broker. Connection refused.")

    monkeypatch.setattr(tasks.low_balance_alert, "delay", broker_down)
    entries = LedgerEntry.objects.count()

    with django_capture_on_commit_callbacks(execute=True):
        posting = debit(armed, "60")

    assert posting.balance_after == D("40")
    assert LedgerEntry.objects.count() == entries + 2
    assert wallet_of(armed).balance == D("40")
    assert mail.outbox == []
    assert wallet_of(armed).low_balance_alerted is False  # not claimed: a later debit tries again


@pytest.mark.usefixtures("local_receivers")
def test_a_failing_alert_webhook_does_not_fail_the_debit_nor_repeat_the_email(
    armed, hook_server, django_capture_on_commit_callbacks
):
    receiver = hook_server(status=500)
    alert_webhook_set(armed, receiver.url(host="hooks.example.com"))
    entries = LedgerEntry.objects.count()

    with django_capture_on_commit_callbacks(execute=True):
        posting = debit(armed, "60")

    assert posting.balance_after == D("40")
    assert LedgerEntry.objects.count() == entries + 2
    assert len(receiver.requests) >= 2  # the webhook is retried …
    assert len(mail.outbox) == 1  # … but the people are emailed once
    assert wallet_of(armed).low_balance_alerted is True


def test_a_failing_mail_server_does_not_fail_the_debit(armed, settings, django_capture_on_commit_callbacks):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1  # nothing listens on the discard port
    entries = LedgerEntry.objects.count()

    with django_capture_on_commit_callbacks(execute=True):
        posting = debit(armed, "60")

    assert posting.balance_after == D("40")
    assert LedgerEntry.objects.count() == entries + 2
    assert wallet_of(armed).balance == D("40")


def test_an_organization_without_managers_emails_no_one(organization, django_capture_on_commit_callbacks):
    organization.memberships.all().delete()
    organization.memberships.create(user=UserFactory(), role="member")
    wallet_fund(organization, "100")
    Wallet.objects.filter(organization_id=organization.pk).update(low_balance_threshold=D("50"))

    with django_capture_on_commit_callbacks(execute=True):
        debit(organization, "60")

    assert mail.outbox == []
    assert wallet_of(organization).low_balance_alerted is True
