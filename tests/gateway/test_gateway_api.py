"""The gateway's faces through the real `openai` SDK (docs/gateway.md): every refusal in OpenAI's error shape and
the SDK class it raises, with nothing written and no upstream called; the per-key limits and their headers; test
keys (simulated answers or the sandbox upstream, never a paid one, never money); GET /v1/models; tenant isolation."""

from __future__ import annotations

import base64
from datetime import timedelta
from decimal import Decimal

import httpx
import openai
import pytest
from django.test import override_settings
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiKey
from gateway.simulate import REPLY
from gateway.tokens import count_chat_prompt, count_text
from metering.models import CalcMethod, Hold, HoldStatus, UsageRecord
from tests.factories import organization_create, wallet_fund
from tests.gateway.fake_upstream import LOREM, FakeUpstream, run_async
from tests.gateway.world import MODEL, World, wait_hold_finished, world_build
from tests.payments.helpers import assert_money_invariants, money_state, wallet_of

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Hello"}]
ERROR_FIELDS = {"message", "type", "param", "code"}
RATELIMIT_HEADERS = {f"x-ratelimit-{part}-{kind}" for part in ("limit", "remaining", "reset") for kind in ("requests", "tokens")}


def chat(client: openai.OpenAI, **options):
    return client.chat.completions.create(
        model=options.pop("model", MODEL), messages=options.pop("messages", MESSAGES), **options
    )


def error_of(raised: pytest.ExceptionInfo, *, status: int, code: str) -> dict:
    """The SDK error carries our body: OpenAI's four fields, this status and code, and a request id."""
    error = raised.value
    assert error.status_code == status, error
    assert isinstance(error.body, dict) and set(error.body) == ERROR_FIELDS, error.body
    assert error.code == code, error.body
    assert error.response.headers["x-request-id"]
    return error.body


def raw_post(world_or_secret: World | str | None, gateway, path: str = "chat/completions", **options) -> httpx.Response:
    secret = world_or_secret.live_secret if isinstance(world_or_secret, World) else world_or_secret
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    return httpx.post(f"{gateway.base_url}/{path}", headers=headers | options.pop("headers", {}), timeout=10, **options)


def raw_error(response: httpx.Response, *, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS, body
    assert body["error"]["code"] == code, body
    assert response.headers["x-request-id"]
    return body["error"]


def other_route(model: str, fake: FakeUpstream) -> World:
    """A second route (and an organization of its own, unused) so a key may be limited to one of two models."""
    return world_build(upstreams=[fake], model=model)


# --- Authentication ------------------------------------------------------------------------------------------------


def test_no_key_is_401_invalid_api_key(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream])
    before = money_state(world.organization)

    raw_error(raw_post(None, gateway, json={"model": MODEL, "messages": MESSAGES}), status=401, code="invalid_api_key")
    raw_error(
        raw_post(None, gateway, json={"model": MODEL, "messages": MESSAGES}, headers={"Authorization": "Basic eDp5"}),
        status=401,
        code="invalid_api_key",
    )
    with pytest.raises(openai.AuthenticationError) as raised:  # the SDK insists on a key: a bare prefix is none
        chat(openai.OpenAI(base_url=gateway.base_url, api_key="tg_live_", max_retries=0, timeout=10))
    error_of(raised, status=401, code="invalid_api_key")

    assert fake_upstream.requests == []
    assert money_state(world.organization) == before


@pytest.mark.parametrize("case", ["unknown", "revoked", "expired"])
def test_a_refused_key_raises_authentication_error_with_our_body(gateway, fake_upstream, case):
    world = world_build(upstreams=[fake_upstream])
    secret = world.live_secret
    if case == "unknown":
        secret = "tg_live_" + "x" * 43
    elif case == "revoked":
        account_services.api_key_revoke(api_key=ApiKey.objects.get(pk=world.live_key_id))
    else:  # a key can only be created to expire in the future: this one's time has come before its first use
        ApiKey.objects.filter(pk=world.live_key_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    before = money_state(world.organization)

    with pytest.raises(openai.AuthenticationError) as raised:
        chat(openai.OpenAI(base_url=gateway.base_url, api_key=secret, max_retries=0, timeout=10))

    body = error_of(raised, status=401, code="invalid_api_key")
    assert body["type"] == "invalid_request_error"
    assert {"unknown": "Unknown", "revoked": "revoked", "expired": "expired"}[case] in body["message"]
    assert secret not in body["message"]
    assert fake_upstream.requests == []
    assert money_state(world.organization) == before


# --- Money refusals: 402 before any upstream call -----------------------------------------------------------------


def test_an_exhausted_wallet_is_402_insufficient_balance_and_the_upstream_is_never_called(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], balance="0")
    before = money_state(world.organization)

    with pytest.raises(openai.APIStatusError) as raised:
        chat(world.client(gateway))
    with pytest.raises(openai.APIStatusError) as streamed:
        chat(world.client(gateway), stream=True)

    for refusal in (raised, streamed):
        assert type(refusal.value) is openai.APIStatusError  # the SDK has no class of its own for 402
        assert error_of(refusal, status=402, code="insufficient_balance")["type"] == "insufficient_quota"
    assert fake_upstream.requests == []
    assert money_state(world.organization) == before
    assert not Hold.objects.filter(organization=world.organization).exists()
    assert_money_invariants()


def test_a_wallet_short_of_the_worst_case_is_refused_though_the_answer_would_be_cheap(gateway, fake_upstream):
    """The hold is the worst case (prompt + the route's default maximum), not what the answer will cost."""
    world = world_build(upstreams=[fake_upstream], balance="0.0005", default_max_tokens=64)  # 64 tokens out: $0.00064
    before = money_state(world.organization)

    with pytest.raises(openai.APIStatusError) as raised:
        chat(world.client(gateway))
    error_of(raised, status=402, code="insufficient_balance")
    assert fake_upstream.requests == []

    reply = chat(world.client(gateway), max_tokens=10)  # a smaller maximum fits: the same wallet may call

    assert reply.usage.completion_tokens <= 10
    assert len(fake_upstream.requests) == 1
    sent = fake_upstream.requests[0].body
    assert sent["max_tokens"] == 10 and "max_completion_tokens" not in sent  # the client's maximum, not the default
    assert wallet_of(world.organization).balance == before["balance"] - world.cost(
        input_tokens=reply.usage.prompt_tokens, output_tokens=reply.usage.completion_tokens
    )
    assert_money_invariants()


def test_a_hard_budget_is_402_budget_exceeded_and_counts_each_call_as_charged(gateway, fake_upstream):
    from payments.models import Budget, BudgetSpend

    world = world_build(upstreams=[fake_upstream])
    Budget.objects.create(organization=world.organization, period="day", amount=Decimal("0.0001"), mode="hard")
    before = money_state(world.organization)

    with pytest.raises(openai.APIStatusError) as raised:
        chat(world.client(gateway))  # its worst case passes the day's budget

    error_of(raised, status=402, code="budget_exceeded")
    assert fake_upstream.requests == []
    assert money_state(world.organization) == before

    Budget.objects.filter(organization=world.organization).update(amount=Decimal("1"))
    small = chat(world.client(gateway), max_tokens=1)
    charged = world.cost(input_tokens=small.usage.prompt_tokens, output_tokens=1)
    wait_hold_finished(world)
    assert BudgetSpend.objects.get(organization=world.organization).spent == charged  # the hold's worst case became the charge
    assert_money_invariants()


def test_a_keys_spend_cap_is_402_spend_cap_exceeded_and_the_upstream_is_never_called(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], spend_cap=Decimal("0.0001"))  # a worst case costs more
    before = money_state(world.organization)

    with pytest.raises(openai.APIStatusError) as raised:
        chat(world.client(gateway))

    error_of(raised, status=402, code="spend_cap_exceeded")
    assert fake_upstream.requests == []
    assert money_state(world.organization) == before

    small = chat(world.client(gateway), max_tokens=1)  # a worst case under the cap passes

    assert small.usage.completion_tokens == 1 and len(fake_upstream.requests) == 1
    assert ApiKey.objects.get(pk=world.live_key_id).spent == world.cost(input_tokens=small.usage.prompt_tokens, output_tokens=1)
    assert_money_invariants()


# --- Routes ------------------------------------------------------------------------------------------------------------


def test_a_model_outside_the_keys_allowed_models_is_403_model_not_allowed(gateway, fake_upstream):
    other_route("gpt-4o", fake_upstream)
    world = world_build(upstreams=[fake_upstream], allowed_models=["gpt-4o"])
    before = money_state(world.organization)

    with pytest.raises(openai.PermissionDeniedError) as raised:
        chat(world.client(gateway))

    body = error_of(raised, status=403, code="model_not_allowed")
    assert body["param"] == "model"
    assert fake_upstream.requests == []
    assert money_state(world.organization) == before

    chat(world.client(gateway), model="gpt-4o")  # the allowed one answers
    assert [r.body["model"] for r in fake_upstream.requests] == ["gpt-4o-upstream"]


def test_an_unknown_model_is_404_model_not_found(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream])
    before = money_state(world.organization)

    with pytest.raises(openai.NotFoundError) as raised:
        chat(world.client(gateway), model="gpt-5-imaginary")

    body = error_of(raised, status=404, code="model_not_found")
    assert body["param"] == "model" and "gpt-5-imaginary" in body["message"]
    assert fake_upstream.requests == []
    assert money_state(world.organization) == before


# --- Bad bodies: 400 with nothing written ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"messages": "Hello"}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10_000_001}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"n": 129}, "n"),
        ({"n": 0}, "n"),
        ({"stream": "yes"}, "stream"),
    ],
    ids=lambda value: str(value),
)
def test_a_body_the_money_cannot_be_worked_out_from_is_400_and_writes_nothing(gateway, fake_upstream, options, param):
    world = world_build(upstreams=[fake_upstream], rpm_limit=100, tpm_limit=100_000)
    before = money_state(world.organization)

    with pytest.raises(openai.BadRequestError) as raised:
        chat(world.client(gateway), **options)

    body = error_of(raised, status=400, code="invalid_request")
    assert body["param"] == param and body["type"] == "invalid_request_error"
    assert fake_upstream.requests == []
    assert money_state(world.organization) == before
    after = world.client(gateway).chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert after.headers["x-ratelimit-remaining-requests"] == "99"  # the refused body took nothing from the limits


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b"", "not valid JSON"), (b"\xff\xfe", "not valid JSON")],
    ids=["broken", "array", "empty", "binary"],
)
def test_a_body_that_is_not_a_json_object_is_400(gateway, fake_upstream, content, message):
    world = world_build(upstreams=[fake_upstream])
    before = money_state(world.organization)

    response = raw_post(world, gateway, content=content, headers={"Content-Type": "application/json"})

    assert message in raw_error(response, status=400, code="invalid_request")["message"]
    assert fake_upstream.requests == []
    assert money_state(world.organization) == before


def test_a_body_larger_than_the_limit_is_400_whether_its_length_is_declared_or_chunked(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream])
    before = money_state(world.organization)
    long_messages = [{"role": "user", "content": "word " * 600}]  # 3 kB

    with override_settings(GATEWAY_MAX_BODY_BYTES=2048):
        with pytest.raises(openai.BadRequestError) as raised:
            chat(world.client(gateway), messages=long_messages)
        chunked = raw_post(world, gateway, content=iter([b'{"model": "gpt-4o-mini", "messages": [', b" " * 3000, b"]}"]))
        fits = chat(world.client(gateway))  # a small body still passes under the same limit

    assert "larger than 2048 bytes" in error_of(raised, status=400, code="invalid_request")["message"]
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert "larger than 2048 bytes" in raw_error(chunked, status=400, code="invalid_request")["message"]
    assert fits.choices[0].message.content
    assert len(fake_upstream.requests) == 1  # only the call that fitted
    assert UsageRecord.objects.filter(organization=world.organization).count() == before["usage_records"] + 1


def test_an_unknown_v1_path_is_404_in_our_shape(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream])

    with pytest.raises(openai.NotFoundError) as raised:
        world.client(gateway).post("/audio/speech", body={"model": MODEL, "input": "Hi"}, cast_to=httpx.Response)

    assert error_of(raised, status=404, code="unknown_endpoint")["type"] == "invalid_request_error"
    raw_error(httpx.get(f"{gateway.base_url}/fine_tuning/jobs", timeout=10), status=404, code="unknown_endpoint")
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    ("method", "path", "allowed"), [("GET", "chat/completions", "POST"), ("PUT", "embeddings", "POST"), ("POST", "models", "GET")]
)
def test_a_wrong_method_is_405_method_not_allowed(gateway, fake_upstream, method, path, allowed):
    world = world_build(upstreams=[fake_upstream])
    before = money_state(world.organization)

    response = httpx.request(
        method, f"{gateway.base_url}/{path}", headers={"Authorization": f"Bearer {world.live_secret}"}, json={}, timeout=10
    )

    raw_error(response, status=405, code="method_not_allowed")
    assert response.headers["Allow"] == allowed
    assert fake_upstream.requests == []
    assert money_state(world.organization) == before


# --- Rate limits ---------------------------------------------------------------------------------------------------


def test_rpm_limit_the_third_call_is_rate_limited_with_retry_after_and_headers(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], rpm_limit=2)
    client = world.client(gateway)

    first = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    second = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    before = money_state(world.organization)
    with pytest.raises(openai.RateLimitError) as raised:
        chat(client)

    assert first.parse().choices[0].message.content and second.parse().choices[0].message.content
    assert (first.headers["x-ratelimit-limit-requests"], first.headers["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert (second.headers["x-ratelimit-limit-requests"], second.headers["x-ratelimit-remaining-requests"]) == ("2", "0")
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")  # a Go-style duration like OpenAI's
    assert "x-ratelimit-limit-tokens" not in first.headers  # no TPM limit, no token headers
    body = error_of(raised, status=429, code="rate_limit_exceeded")
    assert body["type"] == "rate_limit_error"
    headers = raised.value.response.headers
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("2", "0")
    assert len(fake_upstream.requests) == 2
    assert money_state(world.organization) == before  # the refused call held nothing
    assert_money_invariants()


def test_tpm_limit_smaller_than_one_calls_worst_case_is_429_without_retry_after(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], tpm_limit=50, default_max_tokens=64)
    before = money_state(world.organization)

    with pytest.raises(openai.RateLimitError) as raised:
        chat(world.client(gateway))

    body = error_of(raised, status=429, code="rate_limit_exceeded")
    assert "tokens-per-minute limit (50)" in body["message"] and body["param"] == "max_tokens"
    headers = raised.value.response.headers
    assert "Retry-After" not in headers  # it can never fit: waiting would not help (docs/gateway-resilience.md)
    assert (headers["x-ratelimit-limit-tokens"], headers["x-ratelimit-remaining-tokens"]) == ("50", "50")
    assert fake_upstream.requests == []
    assert money_state(world.organization) == before


def test_tpm_reserves_the_worst_case_and_gives_back_what_the_call_did_not_use(gateway, fake_upstream):
    fake_upstream.set_default(chunks=5)  # every answer: 5 completion tokens
    prompt = count_chat_prompt({"model": MODEL, "messages": MESSAGES}, model=MODEL)
    worst, actual = prompt + 60, prompt + 5
    tpm = worst + actual + 3  # two worst cases do not fit; a worst case after one actual does
    world = world_build(upstreams=[fake_upstream], tpm_limit=tpm)
    client = world.client(gateway)

    first = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=60)
    assert first.parse().usage.total_tokens == actual
    second = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=60)
    with pytest.raises(openai.RateLimitError) as raised:
        chat(client, max_tokens=60)

    assert first.headers["x-ratelimit-limit-tokens"] == str(tpm)
    assert first.headers["x-ratelimit-remaining-tokens"] == str(tpm - worst)
    assert int(second.headers["x-ratelimit-remaining-tokens"]) in range(tpm - actual - worst, tpm - actual - worst + 3)
    error_of(raised, status=429, code="rate_limit_exceeded")
    assert int(raised.value.response.headers["Retry-After"]) >= 1  # it will fit once the bucket refills
    assert len(fake_upstream.requests) == 2


def test_max_concurrent_streams_refuses_a_second_stream_while_the_first_is_open_and_frees_the_slot(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], max_concurrent_streams=1)
    client = world.client(gateway)
    fake_upstream.push(chunk_delay=0.05, chunks=8)

    first = chat(client, stream=True)
    first_chunks = [next(iter(first))]
    with pytest.raises(openai.RateLimitError) as raised:
        chat(client, stream=True)
    plain = chat(client)  # a plain call is not a stream: the cap does not apply
    first_chunks += list(first)
    third = list(chat(client, stream=True))

    body = error_of(raised, status=429, code="rate_limit_exceeded")
    assert "1 streams open" in body["message"]
    assert raised.value.response.headers["Retry-After"] == "1"
    assert "".join(c.choices[0].delta.content or "" for c in first_chunks if c.choices)
    assert plain.choices[0].message.content
    assert "".join(c.choices[0].delta.content or "" for c in third if c.choices)
    assert len(fake_upstream.requests) == 3  # the refused stream never reached the upstream
    records = UsageRecord.objects.filter(organization=world.organization)
    assert sorted(r.metadata["stream"] for r in records) == [False, True, True]
    assert_money_invariants()


def test_a_stream_that_fails_before_its_first_byte_frees_its_stream_slot(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], max_concurrent_streams=1)
    client = world.client(gateway)
    fake_upstream.push(status=500, times=2)  # the call and its one retry

    with pytest.raises(openai.InternalServerError):
        chat(client, stream=True)
    again = list(chat(client, stream=True))

    assert again and len(fake_upstream.requests) == 3


def test_successful_answers_carry_the_ratelimit_headers_plain_and_streamed(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], rpm_limit=100, tpm_limit=100_000)
    client = world.client(gateway)
    prompt = count_chat_prompt({"model": MODEL, "messages": MESSAGES}, model=MODEL)

    plain = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=20)
    streamed = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=20, stream=True)
    chunks = list(streamed.parse())

    for response in (plain, streamed):
        assert set(response.headers) >= RATELIMIT_HEADERS, response.headers
        assert response.headers["x-ratelimit-limit-requests"] == "100"
        assert response.headers["x-ratelimit-limit-tokens"] == "100000"
        assert response.headers["x-request-id"]
    assert plain.headers["x-ratelimit-remaining-requests"] == "99"
    assert plain.headers["x-ratelimit-remaining-tokens"] == str(100_000 - prompt - 20)
    assert chunks and plain.parse().usage.prompt_tokens == prompt


def test_a_key_without_limits_gets_no_ratelimit_headers(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream])

    response = world.client(gateway).chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)

    assert not RATELIMIT_HEADERS & set(response.headers)
    assert response.headers["x-request-id"]


# --- Test keys -----------------------------------------------------------------------------------------------------


def assert_test_usage_moved_no_money(world: World, before: dict, *, records: int) -> list[UsageRecord]:
    wallet = wallet_of(world.organization)
    assert (wallet.balance, wallet.held) == (before["balance"], before["held"])
    usage = list(UsageRecord.objects.filter(organization=world.organization).order_by("id"))
    assert len(usage) == records
    assert all(record.test and record.transfer_id is None for record in usage)
    assert not Hold.objects.filter(organization=world.organization, status=HoldStatus.ACTIVE).exists()
    assert_money_invariants()
    return usage


def test_a_test_key_gets_simulated_chat_plain_and_streamed_and_moves_no_money(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream])
    client = world.client(gateway, test=True)
    before = money_state(world.organization)

    plain = chat(client)
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    async_client = world.async_client(gateway, test=True)
    async_answer = run_async(async_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5))

    assert plain.choices[0].message.content == REPLY
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == REPLY
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == count_text(REPLY, model=MODEL)
    assert count_text(async_answer.choices[0].message.content, model=MODEL) <= 5
    assert fake_upstream.requests == []  # never the paid upstream
    usage = assert_test_usage_moved_no_money(world, before, records=3)
    assert [r.metadata["upstream"] for r in usage] == ["simulated"] * 3
    assert usage[0].input_tokens == plain.usage.prompt_tokens and usage[0].output_tokens == plain.usage.completion_tokens
    assert usage[0].cost == world.cost(input_tokens=plain.usage.prompt_tokens, output_tokens=plain.usage.completion_tokens)


def test_a_test_key_gets_simulated_completions_and_embeddings(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream])
    client = world.client(gateway, test=True)
    before = money_state(world.organization)

    completion = client.completions.create(model=MODEL, prompt="Say something", max_tokens=8)
    floats = client.embeddings.create(model=MODEL, input=["one", "two"], encoding_format="float")
    packed = client.embeddings.create(model=MODEL, input="three")  # the SDK asks for base64 and decodes it

    assert completion.choices[0].text and completion.usage.completion_tokens <= 8
    assert [len(item.embedding) for item in floats.data] == [8, 8]
    assert len(packed.data[0].embedding) == 8 and packed.usage.prompt_tokens >= 1
    assert fake_upstream.requests == []
    usage = assert_test_usage_moved_no_money(world, before, records=3)
    assert [r.metadata["endpoint"] for r in usage] == ["completions", "embeddings", "embeddings"]


def test_a_test_key_gets_simulated_images(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], model="dall-e-3", calc_method=CalcMethod.IMAGE_RESOLUTION, unit_price="0.01")
    before = money_state(world.organization)

    images = world.client(gateway, test=True).images.generate(
        model="dall-e-3", prompt="a lighthouse", n=2, size="1024x1024", response_format="b64_json"
    )

    assert len(images.data) == 2
    assert base64.b64decode(images.data[0].b64_json).startswith(b"\x89PNG")
    assert fake_upstream.requests == []
    (record,) = assert_test_usage_moved_no_money(world, before, records=1)
    assert record.cost == Decimal("0.08")  # 2 images × 2 × 2 tiles × $0.01: priced, never charged


def test_a_test_key_with_an_empty_wallet_still_works(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream], balance="0")
    before = money_state(world.organization)

    reply = chat(world.client(gateway, test=True))
    with pytest.raises(openai.APIStatusError) as live:
        chat(world.client(gateway))

    assert reply.choices[0].message.content == REPLY
    error_of(live, status=402, code="insufficient_balance")
    assert fake_upstream.requests == []
    assert_test_usage_moved_no_money(world, before, records=1)


def sandboxed_world(paid: FakeUpstream, sandbox: FakeUpstream, **options) -> World:
    return world_build(upstreams=[("paid", paid.url + "/v1"), ("play", sandbox.url + "/v1")], sandbox=("play",), **options)


def test_a_test_key_goes_only_to_the_routes_sandbox_upstream_and_a_live_key_to_the_paid_one(
    gateway, fake_upstream, fake_upstream_b
):
    world = sandboxed_world(fake_upstream, fake_upstream_b)
    before = money_state(world.organization)

    test_plain = chat(world.client(gateway, test=True))
    test_stream = list(chat(world.client(gateway, test=True), stream=True))
    assert fake_upstream.requests == []
    assert len(fake_upstream_b.requests) == 2
    assert_test_usage_moved_no_money(world, before, records=2)

    live = chat(world.client(gateway))

    assert test_plain.choices[0].message.content == live.choices[0].message.content == LOREM
    assert "".join(c.choices[0].delta.content or "" for c in test_stream if c.choices) == LOREM
    assert len(fake_upstream.requests) == 1 and len(fake_upstream_b.requests) == 2
    assert {r.authorization for r in fake_upstream.requests + fake_upstream_b.requests} == {"Bearer sk-upstream-secret"}
    records = UsageRecord.objects.filter(organization=world.organization).order_by("id")
    assert [(r.test, r.metadata["upstream"]) for r in records] == [(True, "play"), (True, "play"), (False, "paid")]
    assert wallet_of(world.organization).balance == before["balance"] - world.cost(
        input_tokens=live.usage.prompt_tokens, output_tokens=live.usage.completion_tokens
    )
    assert_money_invariants()


def test_a_test_key_never_falls_back_to_a_paid_upstream_when_the_sandbox_fails(gateway, fake_upstream, fake_upstream_b):
    world = sandboxed_world(fake_upstream, fake_upstream_b)
    fake_upstream_b.set_default(status=500)
    before = money_state(world.organization)

    with pytest.raises(openai.InternalServerError) as raised:
        chat(world.client(gateway, test=True))

    error_of(raised, status=502, code="upstream_error")
    assert fake_upstream.requests == []
    assert fake_upstream_b.requests
    assert [(h.test, h.status) for h in Hold.objects.filter(organization=world.organization)] == [(True, HoldStatus.RELEASED)]
    assert_test_usage_moved_no_money(world, before, records=0)


# --- GET /v1/models ----------------------------------------------------------------------------------------------


def test_models_lists_the_routes_a_key_may_use(gateway, fake_upstream):
    other_route("gpt-4o", fake_upstream)
    world = world_build(upstreams=[fake_upstream])
    limited = account_services.api_key_create(organization=world.organization, name="limited", allowed_models=["gpt-4o"])
    limited_client = openai.OpenAI(base_url=gateway.base_url, api_key=limited.secret, max_retries=0, timeout=10)

    everything = list(world.client(gateway).models.list())
    test_mode = list(world.client(gateway, test=True).models.list())
    only = list(limited_client.models.list())

    assert [m.id for m in everything] == [m.id for m in test_mode] == ["gpt-4o", "gpt-4o-mini"]
    assert [m.id for m in only] == ["gpt-4o"]
    assert all(m.object == "model" and m.owned_by == "tollgate" and m.created > 0 for m in everything)
    assert fake_upstream.requests == []


def test_models_refuses_a_bad_key(gateway, fake_upstream):
    world_build(upstreams=[fake_upstream])

    with pytest.raises(openai.AuthenticationError) as raised:
        openai.OpenAI(base_url=gateway.base_url, api_key="tg_live_nope", max_retries=0, timeout=10).models.list()

    error_of(raised, status=401, code="invalid_api_key")


# --- Tenant isolation ----------------------------------------------------------------------------------------------


def tenant_state(organization) -> dict:
    """money_state without its installation-wide counts."""
    state = money_state(organization)
    return {name: value for name, value in state.items() if name not in ("ledger_entries", "transfers", "webhook_events")}


def test_a_key_charges_only_its_own_organization(gateway, fake_upstream):
    world = world_build(upstreams=[fake_upstream])
    other = organization_create(name="Globex")
    wallet_fund(other, "5.00")
    other_secret = account_services.api_key_create(organization=other, name="globex").secret
    other_client = openai.OpenAI(base_url=gateway.base_url, api_key=other_secret, max_retries=0, timeout=10)
    chat(other_client)  # the other tenant has usage of its own ...
    fake_upstream.push(chunk_delay=0.05, chunks=6)
    other_stream = chat(other_client, stream=True)
    next(iter(other_stream))  # ... and a hold open while this one calls
    other_before = tenant_state(other)
    assert len(other_before["holds"]) == 2 and wallet_of(other).held > 0
    before = money_state(world.organization)

    plain = chat(world.client(gateway))
    streamed = list(chat(world.client(gateway), stream=True, stream_options={"include_usage": True}))

    assert tenant_state(other) == other_before
    list(other_stream)
    records = UsageRecord.objects.filter(organization=world.organization).order_by("id")
    assert [r.api_key_id for r in records] == [world.live_key_id] * 2
    expected = world.cost(input_tokens=plain.usage.prompt_tokens, output_tokens=plain.usage.completion_tokens) + world.cost(
        input_tokens=streamed[-1].usage.prompt_tokens, output_tokens=streamed[-1].usage.completion_tokens
    )
    assert wallet_of(world.organization).balance == before["balance"] - expected
    assert UsageRecord.objects.filter(organization=other).count() == 2
    assert_money_invariants()


def test_a_live_key_skips_a_sandbox_upstream_listed_before_the_paid_one(gateway, fake_upstream, fake_upstream_b):
    """Else a live key would pay for simulated answers whenever staff list the sandbox first."""
    world = world_build(upstreams=[("play", fake_upstream_b.url + "/v1"), ("paid", fake_upstream.url + "/v1")], sandbox=("play",))

    chat(world.client(gateway))
    chat(world.client(gateway, test=True))

    assert len(fake_upstream.requests) == 1 and len(fake_upstream_b.requests) == 1
    records = UsageRecord.objects.filter(organization=world.organization).order_by("id")
    assert [(r.test, r.metadata["upstream"]) for r in records] == [(False, "paid"), (True, "play")]
    assert_money_invariants()
