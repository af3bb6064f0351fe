"""Hostile request shapes get a clear 4xx and change nothing, never a 500: deep JSON, deep metadata,
bodies over the limit, and over-long or control-character Idempotency-Key headers on any endpoint."""

import json

import pytest

from metering.models import Hold, UsageRecord
from payments.models import Payment
from tests.metering.helpers import BATCH, HOLDS, USAGE
from tests.payments.helpers import assert_error


def nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_deeply_nested_metadata_is_400(funded, live_client):
    response = live_client.post(USAGE, {"service": "ping", "idempotency_key": "d", "metadata": nested(9)}, format="json")
    error = assert_error(response, 400, "invalid_request")
    assert "metadata" in error["details"]
    assert not UsageRecord.objects.exists()


def test_metadata_at_the_depth_limit_is_accepted(funded, live_client):
    response = live_client.post(USAGE, {"service": "ping", "idempotency_key": "d", "metadata": nested(8)}, format="json")
    assert response.status_code == 201, response.content


@pytest.mark.parametrize("depth", [33, 5_000, 200_000])
def test_json_nested_past_the_parser_limit_is_400(funded, live_client, depth):
    body = "[" * depth + "]" * depth
    assert_error(live_client.post(USAGE, body, content_type="application/json"), 400, "malformed_json")


def test_batch_event_with_deep_metadata_fails_alone(funded, live_client):
    events = [{"service": "ping", "idempotency_key": "ok"}, {"service": "ping", "idempotency_key": "deep", "metadata": nested(9)}]
    results = live_client.post(BATCH, {"events": events}, format="json").json()["results"]
    assert [r["status"] for r in results] == [201, 400]


def test_body_over_the_limit_is_413(funded, live_client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = json.dumps({"service": "translate", "idempotency_key": "big", "text": "x" * 20_000})
    error = assert_error(live_client.post(USAGE, body, content_type="application/json"), 413, "payload_too_large")
    assert error["details"] == {"max_bytes": 10_000}
    assert not UsageRecord.objects.exists()


def test_a_body_django_refuses_while_reading_is_413_not_500(settings):
    """Django raises RequestDataTooBig when it reads a body past the limit: the API answers 413 too."""
    from django.core.exceptions import RequestDataTooBig

    from billing_site.api.exceptions import exception_handler

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    response = exception_handler(RequestDataTooBig("too big"), {"view": None})
    assert response.status_code == 413
    assert response.data["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("key", ["k" * 256, "line\nbreak", "nul\x00", "tab\there"])
@pytest.mark.parametrize(
    ("path", "body", "client"),
    [
        (USAGE, {"service": "ping"}, "live_client"),
        (HOLDS, {"service": "gpt", "amount": "1"}, "live_client"),
        ("/api/v1/payments/recharge/", {"amount": "10.00", "provider": "sandbox"}, "owner_client"),
        ("/api/v1/redeem/", {"code": "NOPE"}, "owner_client"),
        ("/api/v1/balance/", None, "owner_client"),
    ],
)
def test_bad_idempotency_key_header_is_400_on_any_endpoint(funded, request, key, path, body, client):
    api = request.getfixturevalue(client)
    if body is None:
        response = api.get(path, HTTP_IDEMPOTENCY_KEY=key)
    else:
        response = api.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY=key)
    error = assert_error(response, 400, "invalid_request")
    assert "idempotency_key" in error["details"]
    assert not (UsageRecord.objects.exists() or Hold.objects.exists() or Payment.objects.exists())


def test_idempotency_key_header_at_the_limit_is_accepted(funded, live_client):
    response = live_client.post(USAGE, {"service": "ping"}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 255)
    assert response.status_code == 201, response.content
