import socket
import ssl
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import Role
from billing_site import cache as two_level_cache
from metering.models import CalcMethod
from tests.factories import PASSWORD, ServiceFactory, UserFactory, organization_create, service_with_price, wallet_fund


@pytest.fixture(autouse=True)
def _clean_cache():
    cache.clear()
    two_level_cache.clear_local()  # its entries are valid only with the version tokens just flushed
    yield


@pytest.fixture
def api_client(db) -> APIClient:
    return APIClient()


@pytest.fixture
def owner(db):
    return UserFactory()


@pytest.fixture
def organization(owner):
    return organization_create(name="Acme", owner=owner)


def jwt_client(user) -> APIClient:
    client = APIClient()
    response = client.post("/api/v1/auth/token/", {"email": user.email, "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['access']}")
    return client


@pytest.fixture
def owner_client(owner, organization) -> APIClient:
    return jwt_client(owner)


@pytest.fixture
def member(organization):
    user = UserFactory()
    organization.memberships.create(user=user, role=Role.MEMBER)
    return user


@pytest.fixture
def live_key(organization, owner):
    return account_services.api_key_create(organization=organization, name="live", created_by=owner)


@pytest.fixture
def test_key(organization, owner):
    return account_services.api_key_create(organization=organization, name="test", mode="test", created_by=owner)


def key_client(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def live_client(live_key) -> APIClient:
    return key_client(live_key.secret)


@pytest.fixture
def other_organization(db):
    """A second tenant, with its own owner, for isolation tests."""
    return organization_create(name="Globex")


@pytest.fixture
def other_owner(other_organization):
    return other_organization.memberships.get(role=Role.OWNER).user


@pytest.fixture
def other_key(other_organization):
    return account_services.api_key_create(organization=other_organization, name="globex")


@pytest.fixture
def other_client(other_key) -> APIClient:
    return key_client(other_key.secret)


@pytest.fixture
def staff_user(db):
    """Back-office user with every permission (billing rights)."""
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(staff_user) -> APIClient:
    return jwt_client(staff_user)


@pytest.fixture
def catalogue(db) -> dict:
    """One priced service per calculation method, plus an inactive one."""
    retired = ServiceFactory(slug="retired", active=False)
    retired.prices.create(effective_from="2000-01-01T00:00:00Z", unit_price=Decimal("0.001"))
    return {
        "gpt": service_with_price(slug="gpt", calc_method=CalcMethod.TOKENS, input_price="0.15", output_price="0.60"),
        "translate": service_with_price(slug="translate", calc_method=CalcMethod.CHAR_COUNT, unit_price="0.02"),
        "summarize": service_with_price(slug="summarize", calc_method=CalcMethod.WORD_COUNT, unit_price="0.5"),
        "dalle": service_with_price(slug="dalle", calc_method=CalcMethod.IMAGE_RESOLUTION, unit_price="0.01"),
        "ping": service_with_price(slug="ping", calc_method=CalcMethod.REQUEST, unit_price="0.001"),
        "retired": retired,
    }


@pytest.fixture
def funded(organization, catalogue):
    """The organization's wallet holds $10 and the catalogue exists."""
    wallet_fund(organization, "10")
    return organization


# --- Payments (fixtures shared by tests/payments) -----------------------------------------------


@pytest.fixture
def org_admin(organization):
    """A person with the `admin` role in `organization` (a manager, like the owner)."""
    user = UserFactory()
    organization.memberships.create(user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def org_admin_client(org_admin) -> APIClient:
    return jwt_client(org_admin)


@pytest.fixture
def member_client(member) -> APIClient:
    return jwt_client(member)


@pytest.fixture
def other_owner_client(other_owner) -> APIClient:
    return jwt_client(other_owner)


@pytest.fixture
def eager_celery(settings):
    """Celery tasks run in-process when queued (pair with django_capture_on_commit_callbacks(execute=True))."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    return settings


# --- Outbound HTTP (alert webhooks): real local servers, and DNS answers for names ----------------


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class HookServer:
    """A real HTTP(S) server on a loopback address, in a thread: it records every request and answers
    `status` (with `headers`) after `delay` seconds."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        status: int = 204,
        headers: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        delay: float = 0,
    ) -> None:
        self.requests: list[ReceivedRequest] = []
        self.server_names: list[str | None] = []  # TLS SNI, as each client sent it
        received, answer = self.requests, (status, headers or {}, delay)

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(ReceivedRequest(self.command, self.path, dict(self.headers.items()), body))
                code, extra, pause = answer
                time.sleep(pause)
                self.send_response(code)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = _record  # noqa: N815 - http.server's naming

            def log_message(self, *args) -> None:
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
        self.server = server_class((host, 0), Handler)
        if tls is not None:
            tls.sni_callback = lambda sock, name, context: self.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.host, self.port = host, self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook", *, host: str | None = None, scheme: str = "http") -> str:
        host = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_server():
    """Start HookServers: `hook_server(status=302, headers={...})`; all are stopped after the test."""
    started: list[HookServer] = []

    def start(*args, **kwargs) -> HookServer:
        started.append(HookServer(*args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
def public_dns(monkeypatch) -> dict[str, list[str]]:
    """There is no outside DNS here: `public_dns["hooks.example.com"] = ["93.184.215.14"]` makes the
    resolver (socket.getaddrinfo, the boundary) answer that; other names and IP literals resolve as usual."""
    answers: dict[str, list[str]] = {}
    resolve = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return resolve(host, port, family, type, proto, flags)
        port = int(port or 0)
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0))
            if ":" in address
            else (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))
            for address in answers[name]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers
