from decimal import Decimal

import pytest

from metering.models import Hold, UsageRecord
from payments import ledger
from payments.models import Wallet
from tests.factories import service_with_price
from tests.metering import metered_urls

pytestmark = pytest.mark.urls("tests.metering.metered_urls")


@pytest.fixture
def chat_service(db):
    metered_urls.CALLS.clear()
    # $1 per 1M input tokens, $2 per 1M output tokens: the 1000/1000 estimate holds $0.003.
    return service_with_price(slug="chat", calc_method="TOKENS", input_price="1", output_price="2")


def fund(organization, amount: str) -> None:
    ledger.wallet_adjust(organization_id=organization.pk, amount=Decimal(amount), reason="test", created_by_id=None)


def test_decorated_view_is_charged_actual_usage(organization, live_client, chat_service):
    fund(organization, "1")
    response = live_client.post("/chat/", {}, format="json")
    assert response.status_code == 200
    record = UsageRecord.objects.get(pk=response["X-Tollgate-Usage-Id"])
    assert (record.input_tokens, record.output_tokens, record.cost) == (300, 20, Decimal("0.00034"))
    wallet = Wallet.objects.get(organization=organization)
    assert (wallet.balance, wallet.held) == (Decimal("0.99966"), Decimal(0))
    assert Hold.objects.get().status == "captured"


def test_unaffordable_call_answers_402_without_calling_the_view(organization, live_client, chat_service):
    fund(organization, "0.001")
    response = live_client.post("/chat/", {}, format="json")
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_balance"
    assert metered_urls.CALLS == []
    assert not Hold.objects.exists()


@pytest.mark.parametrize("failure", ["status", "raise"])
def test_failed_view_releases_the_hold(organization, live_client, chat_service, failure):
    fund(organization, "1")
    live_client.raise_request_exception = False
    response = live_client.post(f"/chat/?fail={failure}", {}, format="json")
    assert response.status_code >= 500
    assert Hold.objects.get().status == "released"
    assert not UsageRecord.objects.exists()
    wallet = Wallet.objects.get(organization=organization)
    assert (wallet.balance, wallet.held) == (Decimal(1), Decimal(0))


def test_unauthenticated_call_is_refused(api_client, chat_service):
    response = api_client.post("/chat/", {}, format="json")
    assert response.status_code == 401
    assert metered_urls.CALLS == []


def test_drf_mixin_charges_from_response_data(organization, live_client, chat_service):
    fund(organization, "1")
    response = live_client.post("/chat-api/", {"input_tokens": 500, "output_tokens": 500}, format="json")
    assert response.status_code == 200, response.content
    record = UsageRecord.objects.get(pk=response["X-Tollgate-Usage-Id"])
    assert (record.input_tokens, record.output_tokens) == (100, 10)
    assert Hold.objects.get().maxima == {"quantity": 1000, "input_tokens": 500, "output_tokens": 500}
