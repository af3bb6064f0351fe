"""The sandbox provider lets a payer confirm their own payment, so in production it is off unless it
is enabled on purpose: PAYMENT_PROVIDERS names it AND SANDBOX_IN_PRODUCTION is true. Every sandbox
surface obeys: recharge, the checkout page and its confirm button, the webhook, the delivery task."""

from decimal import Decimal
from urllib.parse import urlsplit

import pytest
import responses
from django.core.checks import run_checks

from payments.models import Payment, PaymentStatus, WebhookEvent
from payments.providers import ProviderError, sandbox
from tests.accounts.helpers import assert_error
from tests.dashboard.conftest import client_for
from tests.payments.helpers import money_state, wallet_of
from tests.payments.payment_helpers import RECHARGE_URL, post_sandbox, sandbox_body, sandbox_payment

pytestmark = pytest.mark.django_db


def go_production(settings, *, sandbox_enabled: bool = False) -> None:
    """What TOLLGATE_ENV=production with PAYMENT_PROVIDERS=sandbox,stripe makes of the settings."""
    settings.DEVELOPMENT = False
    settings.PAYMENT_PROVIDERS = ["sandbox", "stripe"]
    settings.SANDBOX_IN_PRODUCTION = sandbox_enabled


def test_production_refuses_a_sandbox_recharge(owner_client, organization, settings):
    go_production(settings)

    response = owner_client.post(RECHARGE_URL, {"amount": "25.00", "provider": "sandbox"}, format="json")

    assert "provider" in assert_error(response, 400, "invalid_request")["details"]
    assert not Payment.objects.exists()


def test_production_hides_the_sandbox_checkout_page_and_its_confirm_button(api_client, organization, settings, eager_celery):
    payment = sandbox_payment(organization, "25.00")  # started while the sandbox was still on
    go_production(settings)
    page = urlsplit(payment.checkout_url).path

    with responses.RequestsMock(assert_all_requests_are_fired=False) as provider_network:
        provider_network.post(settings.SANDBOX_WEBHOOK_URL, status=200)
        assert api_client.get(page).status_code == 404
        assert api_client.post(page, {"decision": "confirm"}).status_code == 404

    assert len(provider_network.calls) == 0  # no notification was sent
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING and wallet_of(organization).balance == 0


def test_production_refuses_sandbox_webhooks(api_client, organization, settings, django_capture_on_commit_callbacks):
    payment = sandbox_payment(organization, "25.00")
    go_production(settings)
    before = money_state(organization)

    with django_capture_on_commit_callbacks(execute=True):
        response = post_sandbox(api_client, sandbox_body(payment))

    assert_error(response, 400, "invalid_signature")
    assert not WebhookEvent.objects.exists()
    assert money_state(organization) == before


def test_production_never_delivers_a_queued_sandbox_notification(organization, settings):
    payment = sandbox_payment(organization, "25.00")
    go_production(settings)

    with responses.RequestsMock(assert_all_requests_are_fired=False) as provider_network:
        provider_network.post(settings.SANDBOX_WEBHOOK_URL, status=200)
        with pytest.raises(ProviderError):
            sandbox.deliver(payment_id=payment.pk, outcome="succeeded")

    assert len(provider_network.calls) == 0


def test_the_billing_page_offers_no_sandbox_in_production(owner, organization, settings):
    assert 'value="sandbox"' in client_for(owner).get("/dashboard/billing/").content.decode()
    go_production(settings)
    assert 'value="sandbox"' not in client_for(owner).get("/dashboard/billing/").content.decode()


def test_production_with_the_sandbox_enabled_on_purpose_works(
    owner_client, api_client, organization, settings, eager_celery, django_capture_on_commit_callbacks
):
    go_production(settings, sandbox_enabled=True)

    response = owner_client.post(RECHARGE_URL, {"amount": "25.00", "provider": "sandbox"}, format="json")
    assert response.status_code == 201, response.content
    payment = Payment.objects.get(pk=response.json()["id"])
    assert api_client.get(urlsplit(payment.checkout_url).path).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        assert post_sandbox(api_client, sandbox_body(payment)).status_code == 200

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED and wallet_of(organization).balance == Decimal("25")


def deploy_check_ids() -> set[str]:
    return {message.id for message in run_checks(include_deployment_checks=True, tags=["security"])}


def test_check_deploy_warns_only_when_the_sandbox_is_enabled_in_production(settings):
    go_production(settings, sandbox_enabled=True)
    assert "payments.W001" in deploy_check_ids()
    go_production(settings, sandbox_enabled=False)
    assert "payments.W001" not in deploy_check_ids()
    settings.DEVELOPMENT = True
    assert "payments.W001" not in deploy_check_ids()
