"""The two-level cache of API keys and prices (billing_site/cache.py): a change made through any
write path is seen by every process at its next request, across processes too; expiries and prices
scheduled for later need no message; Redis unreachable means the database answers and cached rows
cannot be changed; a flushed Redis or a row read inside a transaction never serves a stale entry."""

import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache as django_cache
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import selectors as account_selectors
from accounts import services as account_services
from accounts.models import ApiKey, Organization
from billing_site import cache as two_level_cache
from metering import selectors as metering_selectors
from metering.models import UsageRecord
from tests.cache_peer import Peer
from tests.conftest import key_client
from tests.factories import organization_create, price_add, service_with_price, wallet_fund
from tests.metering.helpers import USAGE, ping
from tests.payments.helpers import assert_error, assert_money_invariants, wallet_of

D = Decimal
PING = {"service": "ping"}
SOON = timedelta(seconds=2)  # room for the warm-up requests on a busy machine before a change takes effect


def _statements(client, key: str) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as queries:
        response = ping(client, key)
    return response.status_code, [q["sql"] for q in queries.captured_queries]


def _warm(client, prefix: str) -> None:
    """Two requests: after them, this process's entries are stored and stamped."""
    for n in range(2):
        assert ping(client, f"{prefix}-warm-{n}").status_code == 201


# --- Across processes: warm both, change in one, the other sees it at its very next request ------------------


@pytest.fixture
def peer(transactional_db, tmp_path):
    """A second process (its own cache) on this test database and the same Redis."""
    process = Peer(
        base_dir=Path(settings.BASE_DIR), database_name=connection.settings_dict["NAME"], log_path=tmp_path / "peer.log"
    )
    yield process
    process.stop()


@pytest.fixture
def shop(transactional_db):
    """A committed organization with $10, a live key and the `ping` service at $0.001."""
    organization = organization_create(name="Acme")
    wallet_fund(organization, "10")
    service = service_with_price(slug="ping", unit_price="0.001")
    key = account_services.api_key_create(organization=organization, name="live")
    return organization, service, key


def _peer_ping(peer: Peer, secret: str, key: str) -> dict:
    return peer.post(USAGE, secret=secret, body={**PING, "idempotency_key": key})


def _warm_peer(peer: Peer, secret: str) -> None:
    for n in range(2):
        assert _peer_ping(peer, secret, f"peer-warm-{n}")["status"] == 201
    warm = _peer_ping(peer, secret, "peer-warm-check")
    assert warm["status"] == 201
    assert len(warm["queries"]) == 1, warm["queries"]  # only the debit: the peer answers from its own cache


@pytest.mark.slow
def test_a_key_revoked_in_one_process_is_refused_by_another_at_its_next_request(peer, shop):
    organization, _, key = shop
    client = key_client(key.secret)
    _warm(client, "here")
    _warm_peer(peer, key.secret)

    account_services.api_key_revoke(api_key=key.api_key)

    refused = _peer_ping(peer, key.secret, "after-revoke")
    assert refused["status"] == 401 and refused["body"]["error"]["code"] == "invalid_api_key"
    assert_error(ping(client, "after-revoke-here"), 401, "invalid_api_key")
    assert not UsageRecord.objects.filter(idempotency_key__startswith="after-revoke").exists()
    assert_money_invariants([organization.pk])


@pytest.mark.slow
def test_a_price_added_in_one_process_is_charged_by_another_from_its_next_request(peer, shop):
    organization, service, key = shop
    _warm_peer(peer, key.secret)

    price_add(service=service, organization=organization, unit_price="0.25")

    charged = _peer_ping(peer, key.secret, "after-price")
    assert charged["status"] == 201
    assert charged["body"]["cost"] == "0.250000000000"
    assert_money_invariants([organization.pk])


@pytest.mark.slow
def test_a_spend_cap_set_by_staff_binds_another_process_at_its_next_request(peer, shop):
    organization, _, key = shop
    _warm_peer(peer, key.secret)
    api_key = ApiKey.objects.get(pk=key.api_key.pk)

    api_key.spend_cap = D("0.003")  # what the back office's key inline saves
    api_key.save(update_fields=["spend_cap"])

    refused = _peer_ping(peer, key.secret, "past-the-cap")
    assert refused["status"] == 402 and refused["body"]["error"]["code"] == "spend_cap_exceeded"
    assert ApiKey.objects.get(pk=api_key.pk).spent == D("0.003")  # the three warm-up debits, nothing more
    assert_money_invariants([organization.pk])


@pytest.mark.slow
def test_a_service_retired_in_one_process_is_refused_by_another_at_its_next_request(peer, shop):
    _, service, key = shop
    _warm_peer(peer, key.secret)

    service.active = False
    service.save()

    refused = _peer_ping(peer, key.secret, "after-retirement")
    assert refused["status"] == 404 and refused["body"]["error"]["code"] == "service_not_found"


# --- In one process: every write path and every expiry --------------------------------------------------------


def test_a_revoked_key_is_refused_at_the_next_request(funded, live_key, live_client):
    _warm(live_client, "k")

    account_services.api_key_revoke(api_key=live_key.api_key)

    assert_error(ping(live_client, "after"), 401, "invalid_api_key")


def test_an_expired_key_is_refused_from_its_cached_row(funded, owner):
    created = account_services.api_key_create(
        organization=funded, name="short", created_by=owner, expires_at=timezone.now() + SOON
    )
    client = key_client(created.secret)
    _warm(client, "k")

    time.sleep(max(0.0, (created.api_key.expires_at - timezone.now()).total_seconds()) + 0.01)

    status, statements = _statements(client, "after-expiry")
    assert status == 401
    assert statements == []  # the cached row, compared with the time: no message, no query needed


def test_a_price_scheduled_for_later_is_charged_once_it_takes_effect(funded, catalogue, live_client):
    takes_effect = timezone.now() + SOON
    price_add(service=catalogue["ping"], organization=funded, unit_price="0.5", effective_from=takes_effect)
    _warm(live_client, "k")
    assert ping(live_client, "before").json()["cost"] == "0.001000000000"

    time.sleep(max(0.0, (takes_effect - timezone.now()).total_seconds()) + 0.01)

    assert ping(live_client, "after").json()["cost"] == "0.500000000000"


def test_an_organization_rate_override_applies_at_the_next_request(funded, live_client):
    _warm(live_client, "k")
    organization = Organization.objects.get(pk=funded.pk)

    organization.requests_per_minute = 1  # the back office's organization form
    organization.save()

    assert_error(ping(live_client, "over"), 429, "throttled")


def test_last_used_at_is_written_once_although_the_cached_row_predates_it(funded, live_key, live_client):
    ApiKey.objects.filter(pk=live_key.api_key.pk).update(last_used_at=None)
    statements = [_statements(live_client, f"k{n}")[1] for n in range(4)]

    updates = [sql for batch in statements for sql in batch if sql.startswith("UPDATE")]
    assert len(updates) == 1, statements
    assert ApiKey.objects.get(pk=live_key.api_key.pk).last_used_at is not None


def test_the_cache_holds_digests_and_never_a_secret(funded, live_key, live_client):
    _warm(live_client, "k")

    entries = dict(account_selectors.API_KEYS._entries)
    assert list(entries) == [live_key.api_key.digest]
    assert live_key.secret not in repr(entries)


def test_spend_is_read_from_the_database_never_from_the_cache(funded, live_key, live_client):
    _warm(live_client, "k")
    api_key = account_selectors.api_key_by_digest(digest=live_key.api_key.digest)

    assert api_key is not None
    assert api_key.spent == D("0.002")  # deferred: reading it asks the database


def test_a_flushed_redis_never_lets_an_old_entry_through(funded, live_key, live_client):
    _warm(live_client, "k")
    # A change no signal announced (raw SQL), then Redis loses every token: the entries' old tokens
    # must not come back by chance (tokens are random, never counted up from zero).
    ApiKey.objects.filter(pk=live_key.api_key.pk).update(revoked_at=timezone.now())
    django_cache.clear()

    assert_error(ping(live_client, "after-flush"), 401, "invalid_api_key")


def test_the_local_age_limit_bounds_a_change_redis_never_heard_of(funded, live_key, live_client, settings):
    _warm(live_client, "k")
    ApiKey.objects.filter(pk=live_key.api_key.pk).update(revoked_at=timezone.now())  # unannounced
    assert ping(live_client, "still-cached").status_code == 201  # what the backstop exists for

    settings.CACHE_LOCAL_SECONDS = 0

    assert_error(ping(live_client, "after-backstop"), 401, "invalid_api_key")


def test_rows_read_inside_a_transaction_are_not_kept(funded, catalogue):
    with transaction.atomic():
        metering_selectors.priced_service_get(slug="ping", organization_id=funded.pk)

    assert metering_selectors.PRICED_SERVICES._entries == {}
    metering_selectors.priced_service_get(slug="ping", organization_id=funded.pk)
    assert list(metering_selectors.PRICED_SERVICES._entries) == [(funded.pk, "ping")]


def test_a_retired_service_still_prices_a_hold_capture_from_the_same_entry(funded, catalogue):
    with pytest.raises(metering_selectors.ServiceNotFound):
        metering_selectors.priced_service_get(slug="retired", organization_id=funded.pk)

    priced = metering_selectors.priced_service_get(slug="retired", organization_id=funded.pk, include_inactive=True)

    assert priced.prices.unit_price == D("0.001")


# --- Redis unreachable: the database answers; cached rows cannot change -----------------------------------------


@pytest.fixture
def redis_unreachable(settings, tmp_path):
    settings.THROTTLE_ENABLED = False  # the rate limits need Redis for themselves
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": f"unix://{tmp_path}/none.sock"}}
    yield
    two_level_cache._redis_down = False


def test_without_redis_every_lookup_reads_the_database(funded, live_key, live_client, redis_unreachable):
    _warm(live_client, "k")

    status, statements = _statements(live_client, "measured")

    assert status == 201
    assert len(statements) == 5, statements  # key, price, and the debit (in the test's savepoint)
    assert account_selectors.API_KEYS._entries == {}
    assert wallet_of(funded).balance == D("9.997")


def test_without_redis_a_revocation_is_refused_and_changes_nothing(funded, live_key, live_client, redis_unreachable):
    with pytest.raises(two_level_cache.CacheUnavailable):
        account_services.api_key_revoke(api_key=live_key.api_key)

    assert ApiKey.objects.get(pk=live_key.api_key.pk).revoked_at is None
    assert ping(live_client, "still-valid").status_code == 201


def test_without_redis_a_new_price_is_refused(funded, catalogue, redis_unreachable):
    with pytest.raises(two_level_cache.CacheUnavailable):
        price_add(service=catalogue["ping"], organization=funded, unit_price="0.5")

    assert metering_selectors.priced_service_get(slug="ping", organization_id=funded.pk).prices.unit_price == D("0.001")


def test_a_wallet_made_high_volume_is_seen_by_the_next_request(funded, live_key, live_client):
    from payments import services as payment_services
    from payments.models import STRIPES_MIN

    _warm(live_client, "k")  # the key's row carries the organization's stripe count (0: one row)

    payment_services.wallet_settings_update(organization_id=funded.pk, stripes=STRIPES_MIN)

    api_key = account_selectors.api_key_by_digest(digest=live_key.api_key.digest)
    assert api_key is not None and api_key.organization.wallet_stripes == STRIPES_MIN
    assert ping(live_client, "striped").status_code == 201
    assert_money_invariants([funded.pk])
