from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiKey
from accounts.tenancy import Tenant
from metering import services
from metering.decorators import metered
from metering.models import Hold, UsageRecord
from payments import ledger
from payments.models import Wallet
from tests.concurrency import run_concurrently
from tests.conftest import key_client
from tests.factories import organization_create, service_with_price
from tests.metering import metered_urls
from tests.payments.helpers import assert_error, assert_money_invariants, wallet_of

pytestmark = pytest.mark.urls("tests.metering.metered_urls")


@pytest.fixture
def chat_service(db):
    metered_urls.CALLS.clear()
    # $1 per 1M input tokens, $2 per 1M output tokens: the 1000/1000 estimate holds $0.003.
    return service_with_price(slug="chat", calc_method="TOKENS", input_price="1", output_price="2")


def live_key_of(organization) -> ApiKey:
    return ApiKey.objects.filter(organization=organization, mode="live").first()


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
    response = live_client.post("/chat-api/", {"input_tokens": 0, "output_tokens": 0}, format="json")
    assert response.status_code == 200, response.content
    record = UsageRecord.objects.get(pk=response["X-Tollgate-Usage-Id"])
    assert (record.input_tokens, record.output_tokens) == (100, 10)
    assert Hold.objects.get().maxima == {"quantity": 1000, "input_tokens": 500, "output_tokens": 500}


# --- Nobody gets the view for free (replays, client-declared maxima, test keys) -----------------------


def test_replayed_idempotency_key_never_runs_the_view_again(organization, live_client, chat_service):
    fund(organization, "1")
    first = live_client.post("/chat/", {}, format="json", HTTP_IDEMPOTENCY_KEY="call-1")
    assert first.status_code == 200
    for _ in range(4):
        replay = live_client.post("/chat/", {}, format="json", HTTP_IDEMPOTENCY_KEY="call-1")
        error = assert_error(replay, 409, "idempotency_conflict")
        assert error["details"]["usage_id"] == int(first["X-Tollgate-Usage-Id"])
        assert error["details"]["status"] == "captured"
    assert metered_urls.CALLS == ["chat"]
    assert UsageRecord.objects.count() == 1
    assert wallet_of(organization).balance == Decimal("0.99966")


def test_drf_mixin_replay_never_runs_the_view_again(organization, live_client, chat_service):
    fund(organization, "1")
    assert live_client.post("/chat-api/", {}, format="json", HTTP_IDEMPOTENCY_KEY="k").status_code == 200
    assert_error(live_client.post("/chat-api/", {}, format="json", HTTP_IDEMPOTENCY_KEY="k"), 409, "idempotency_conflict")
    assert metered_urls.CALLS == ["chat-api"]


def test_idempotency_keys_are_namespaced_per_caller(organization, owner, live_client, chat_service):
    fund(organization, "1")
    other = key_client(account_services.api_key_create(organization=organization, name="other", created_by=owner).secret)
    assert live_client.post("/chat/", {}, format="json", HTTP_IDEMPOTENCY_KEY="same").status_code == 200
    assert other.post("/chat/", {}, format="json", HTTP_IDEMPOTENCY_KEY="same").status_code == 200
    assert metered_urls.CALLS == ["chat", "chat"]
    assert all(key.startswith("tollgate:metered:key:") for key in Hold.objects.values_list("idempotency_key", flat=True))


@pytest.mark.parametrize("key", ["x" * 256, "tollgate:hold:1", "a\x00b"])
def test_bad_idempotency_key_is_refused_before_the_view(organization, live_client, chat_service, key):
    fund(organization, "1")
    assert_error(live_client.post("/chat/", {}, format="json", HTTP_IDEMPOTENCY_KEY=key), 400, "invalid_request")
    assert metered_urls.CALLS == []


def test_client_declared_maxima_are_ignored(organization, live_client, chat_service):
    """The hold is the view's worst case (1000 + 1000 tokens = $0.003), whatever the body declares."""
    fund(organization, "1")
    live_client.post("/chat/", {"input_tokens": 0, "output_tokens": 0, "usage": {"output_tokens": 0}}, format="json")
    assert Hold.objects.get().amount == Decimal("0.003")


def test_estimate_that_costs_nothing_is_refused(organization, live_client, chat_service):
    fund(organization, "1")
    assert_error(live_client.post("/free/", {}, format="json"), 400, "invalid_request")
    assert metered_urls.CALLS == []
    assert not Hold.objects.exists()


def test_metered_without_an_estimate_is_a_configuration_error():
    with pytest.raises(ImproperlyConfigured, match="estimate"):
        metered("chat", estimate=None)


def test_wallet_past_its_limit_after_an_over_capture_gets_no_more_calls(organization, live_client, chat_service):
    """An over-capture may go below the limit (docs/contract.md §2.4); after it, not one more call is served."""
    fund(organization, "0.003")  # exactly the worst case
    big = live_client.post("/chat-api/", {}, format="json")  # holds 500/500 = $0.0015, uses 100/10
    assert big.status_code == 200
    services.hold_capture(  # a capture far above its hold: the service was delivered
        tenant=Tenant(organization=organization, user=None, api_key=live_key_of(organization), role=None),
        hold=services.hold_create(
            tenant=Tenant(organization=organization, user=None, api_key=live_key_of(organization), role=None),
            service="chat",
            idempotency_key="h",
            amount=Decimal("0.001"),
            maxima={},
            expires_in=None,
        ).hold,
        data={"input_tokens": 1_000_000, "output_tokens": 0},
    )
    assert wallet_of(organization).available < 0
    metered_urls.CALLS.clear()
    assert_error(live_client.post("/chat/", {}, format="json"), 402, "insufficient_balance")
    assert metered_urls.CALLS == []


def test_test_key_gets_the_test_response_never_the_view(organization, test_key, chat_service):
    fund(organization, "1")
    response = key_client(test_key.secret).post("/chat/", {}, format="json")
    assert response.status_code == 200 and response.json()["answer"] == "simulated"
    assert metered_urls.CALLS == ["test-response"]
    record = UsageRecord.objects.get(pk=response["X-Tollgate-Usage-Id"])
    assert (record.test, record.input_tokens, record.output_tokens, record.transfer_id) == (True, 7, 3, None)
    assert (wallet_of(organization).balance, wallet_of(organization).held) == (Decimal(1), Decimal(0))


def test_drf_mixin_serves_test_keys_its_test_response(organization, test_key, chat_service):
    response = key_client(test_key.secret).post("/chat-api/", {}, format="json")
    assert response.status_code == 200 and response.json()["answer"] == "simulated"
    assert metered_urls.CALLS == ["chat-api-test"]
    assert UsageRecord.objects.get().test is True


def test_test_key_is_refused_where_no_test_response_is_declared(organization, test_key, chat_service):
    assert_error(key_client(test_key.secret).post("/live-only/", {}, format="json"), 403, "permission_denied")
    assert metered_urls.CALLS == []
    assert not Hold.objects.exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_concurrent_replays_run_the_view_once():
    """Eight simultaneous requests with one Idempotency-Key: one runs the view, seven answer 409."""
    metered_urls.CALLS.clear()
    service_with_price(slug="chat", calc_method="TOKENS", input_price="1", output_price="2")
    organization = organization_create(name="Replay")
    secret = account_services.api_key_create(organization=organization, name="k").secret
    fund(organization, "1")

    def call(_: int) -> int:
        return key_client(secret).post("/chat/", {}, format="json", HTTP_IDEMPOTENCY_KEY="once").status_code

    statuses = run_concurrently(8, call, reraise=True)
    assert sorted(statuses) == [200] + [409] * 7
    assert metered_urls.CALLS == ["chat"]
    assert UsageRecord.objects.count() == 1
    assert_money_invariants([organization.pk])


def test_a_failing_usage_report_releases_the_hold(organization, live_client, chat_service):
    """A bug in the view's `actual` hook answers 500, and the reservation does not outlive the request."""
    fund(organization, "1")
    live_client.raise_request_exception = False
    assert live_client.post("/broken-report/", {}, format="json").status_code == 500
    assert Hold.objects.get().status == "released"
    assert (wallet_of(organization).balance, wallet_of(organization).held) == (Decimal(1), Decimal(0))
    assert not UsageRecord.objects.exists()


def test_a_hook_answering_none_reads_the_response(organization, live_client, chat_service):
    fund(organization, "1")
    response = live_client.post("/defers/", {}, format="json")
    assert response.status_code == 200, response.content
    record = UsageRecord.objects.get(pk=response["X-Tollgate-Usage-Id"])
    assert (record.input_tokens, record.output_tokens) == (100, 10)


@pytest.mark.parametrize("path", ["/chat/", "/chat-api/"])
def test_a_key_at_its_spend_cap_never_runs_the_view(organization, owner, chat_service, path):
    """The cap is checked when the worst case is held, before the view runs (a capture is too late:
    the upstream call would already be paid for)."""
    fund(organization, "100")
    capped = account_services.api_key_create(
        organization=organization, name="capped", created_by=owner, spend_cap=Decimal("0.001")
    )
    assert_error(key_client(capped.secret).post(path, {}, format="json"), 402, "spend_cap_exceeded")
    assert metered_urls.CALLS == []
    assert not Hold.objects.exists()


def test_a_view_declares_how_long_its_hold_lasts(organization, live_client, chat_service):
    """A hold that expired before its capture would leave the call unbilled: long views say how long."""
    fund(organization, "1")
    before = timezone.now()
    live_client.post("/live-only/", {}, format="json")
    live_client.post("/chat/", {}, format="json")
    long_hold, default_hold = Hold.objects.order_by("pk")
    assert long_hold.expires_at - before >= timedelta(seconds=3600)
    assert default_hold.expires_at - before <= settings.HOLD_DEFAULT_TTL + timedelta(seconds=5)
