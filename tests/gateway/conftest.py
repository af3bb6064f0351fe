"""The gateway's tests call a fake OpenAI upstream that is a real HTTP server (tests/gateway/fake_upstream.py):
one server per test session for each fixture, reset before every test."""

from collections.abc import Iterator

import pytest

from tests.gateway.fake_upstream import FakeUpstream
from tests.gateway.gateway_server import GatewayServer


@pytest.fixture(scope="session")
def _fake_upstream_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="session")
def _fake_upstream_b_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake_upstream(_fake_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    """The fake upstream, with no requests, no script and the normal behaviour."""
    _fake_upstream_server.reset()
    yield _fake_upstream_server
    _fake_upstream_server.reset()


@pytest.fixture
def fake_upstream_b(_fake_upstream_b_server: FakeUpstream) -> Iterator[FakeUpstream]:
    """A second, independent fake upstream (a route's fallback)."""
    _fake_upstream_b_server.reset()
    yield _fake_upstream_b_server
    _fake_upstream_b_server.reset()


@pytest.fixture(scope="session")
def gateway(django_db_setup, django_db_blocker) -> Iterator[GatewayServer]:
    """The real gateway (gateway.asgi under uvicorn) on a real socket, for the whole session."""
    server = GatewayServer().start()
    yield server
    with django_db_blocker.unblock():
        server.stop()
