"""The soak's requests, one handler per kind, and what each must answer.

Every handler answers an Outcome: ok only when the answer is exactly what a well-behaved server gives
(201 for a debit, a batch whose every event is 201, 200 for a read …). No refusal is expected: the
wallets are funded and recharged well above what the soak spends, so a 402 (or any 4xx/5xx, any
redirect to the login page, any socket error) is an error.

The client keeps an oracle of the money it saw move: the cost of every 201 it was answered and the
amount of every recharge whose success notification it delivered. At the end, each wallet's change must
equal credited − charged to the last decimal.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import itertools
import json
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http.cookies import SimpleCookie
from typing import Any

from bench.soak_load import Job, Outcome
from bench.soak_setup import SoakTenant

SIGNATURE_HEADER = "Tollgate-Signature"
HOLD_MAXIMA = {"input_tokens": 2000, "output_tokens": 1000}
HOLD_TTL_SECONDS = 300
TOKEN_REFRESH_SECONDS = 600.0  # the access token lives 15 minutes by default; a client refreshes it well before
CAPTURE_SHARE = 0.7  # of holds; the rest are released
FAILED_PAYMENT_SHARE = 0.1  # notifications that say the payer declined
REPLAYED_NOTIFICATION_SHARE = 0.1  # delivered twice, as providers do when they miss our 2xx
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def sandbox_signature(body: bytes, *, secret: str, timestamp: int) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`, as the sandbox provider signs (docs/contract.md §3).
    Written here from the contract, not imported from the app, so a change to the app's scheme fails the soak."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass
class Answer:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class Http:
    """One connection per sender thread. Gunicorn's sync workers close every connection after the answer;
    http.client then opens a new one for the next request, as any client would."""

    def __init__(self, port: int, *, timeout: float = 60.0):
        self.port, self.timeout = port, timeout
        self._local = threading.local()

    def request(self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            payload = response.read()
        except Exception:
            connection.close()
            self._local.connection = None
            raise
        collected: dict[str, list[str]] = {}
        for name, value in response.getheaders():
            collected.setdefault(name.lower(), []).append(value)
        return Answer(response.status, collected, payload)

    def json(self, method: str, path: str, payload: Any = None, *, headers: dict[str, str] | None = None) -> Answer:
        body = None if payload is None else json.dumps(payload).encode()
        return self.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})


def cookies(answer: Answer) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for header in answer.headers.get("set-cookie", []):
        jar.load(header)
    return {name: morsel.value for name, morsel in jar.items()}


@dataclass
class Session:
    """What one organization's owner holds: the API key, a JWT pair (recharges need a person), and a
    dashboard session cookie."""

    tenant: SoakTenant
    access: str = ""
    refresh: str = ""
    access_at: float = 0.0  # time.monotonic() when `access` was issued
    cookie: str = ""
    # Refresh tokens rotate and the used one is blacklisted: two threads refreshing at once would lock the
    # second out, as they would any client, so one refresh at a time per owner.
    lock: threading.Lock = field(default_factory=threading.Lock)


def _expect(answer: Answer, status: int, what: str) -> Outcome | None:
    if answer.status == status:
        return None
    return Outcome(ok=False, status=answer.status, error=f"{what}: {answer.body[:200].decode(errors='replace')}")


@dataclass
class Oracle:
    """Money the client saw move, per organization id, and what the end checks need."""

    charged: dict[int, Decimal] = field(default_factory=dict)
    credited: dict[int, Decimal] = field(default_factory=dict)
    payments: dict[int, tuple[str, Decimal]] = field(default_factory=dict)  # payment id -> (final status, amount)
    holds: dict[int, str] = field(default_factory=dict)  # hold id -> the status the soak gave it
    event_ids: list[str] = field(default_factory=list)
    recharged: set[int] = field(default_factory=set)  # payments answered 201 pending (notified or not)
    token_refreshes: int = 0
    events_answered: int = 0  # usage and batch events answered 201 (captures are counted by their holds)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def charge(self, organization_id: int, costs: list[str], *, events: int) -> None:
        with self.lock:
            self.charged[organization_id] = self.charged.get(organization_id, Decimal(0)) + sum(map(Decimal, costs), Decimal(0))
            self.events_answered += events


class Traffic:
    """The handlers of every kind, over the organizations' sessions; `clock` is the load's clock."""

    def __init__(
        self,
        *,
        http_client: Http,
        sessions: list[Session],
        service: str,
        webhook_secret: str,
        key_prefix: str,
        batch_size: int,
        clock: Callable[[], float],
        seed: int,
    ):
        self.http, self.sessions, self.service = http_client, sessions, service
        self.webhook_secret, self.prefix, self.batch_size, self.clock = webhook_secret, key_prefix, batch_size, clock
        self.rng = random.Random(seed)
        # A few organizations busier than the rest (Zipf weights 1, 1/2, 1/3 …), like real tenants.
        self.weights = [1 / (i + 1) for i in range(len(sessions))]
        self.oracle = Oracle()
        self._seq = itertools.count()
        self.handlers: dict[str, Callable[[Job], Outcome]] = {
            "usage": self.usage,
            "batch": self.batch,
            "hold": self.hold,
            "capture": self.capture,
            "release": self.release,
            "recharge": self.recharge,
            "webhook": self.webhook,
            "webhook_replay": self.webhook_replay,
            "overview": self.overview,
            "usage_page": self.usage_page,
            "usage_list": self.usage_list,
            "summary": self.summary,
            "balance": self.balance,
        }

    # --- helpers ---------------------------------------------------------------------------------------
    def _key(self, tag: str) -> str:
        return f"{self.prefix}{tag}{next(self._seq)}"

    def _pick(self) -> Session:
        return self.rng.choices(self.sessions, self.weights)[0]

    def _tokens(self) -> dict[str, int]:
        return {"input_tokens": self.rng.randint(50, 2000), "output_tokens": self.rng.randint(10, 800)}

    @staticmethod
    def _key_auth(session: Session) -> dict[str, str]:
        return {"Authorization": f"Bearer {session.tenant.api_key}"}

    def _later(self, low: float, high: float) -> float:
        return self.clock() + self.rng.uniform(low, high)

    # --- sign-in (once per organization, before the load; not measured) ---------------------------------
    def sign_in(self, session: Session) -> None:
        tenant = session.tenant
        tokens = self.http.json("POST", "/api/v1/auth/token/", {"email": tenant.email, "password": tenant.password})
        if tokens.status != 200:
            raise SystemExit(f"soak: POST auth/token/ for {tenant.email} answered {tokens.status}: {tokens.body[:300]!r}")
        session.access, session.refresh, session.access_at = tokens.json()["access"], tokens.json()["refresh"], time.monotonic()
        page = self.http.request("GET", "/login/")
        csrf_cookie, match = cookies(page).get("csrftoken"), CSRF_FIELD.search(page.body.decode(errors="replace"))
        if page.status != 200 or not csrf_cookie or not match:
            raise SystemExit(f"soak: GET /login/ answered {page.status} without a CSRF cookie and field")
        form = urllib.parse.urlencode({"username": tenant.email, "password": tenant.password, "csrfmiddlewaretoken": match[1]})
        login = self.http.request(
            "POST",
            "/login/",
            body=form.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={csrf_cookie}"},
        )
        session_id = cookies(login).get("sessionid")
        if login.status != 302 or not session_id:
            raise SystemExit(f"soak: POST /login/ for {tenant.email} answered {login.status} without a session")
        session.cookie = f"sessionid={session_id}; csrftoken={csrf_cookie}"

    def _access_token(self, session: Session) -> str:
        """The owner's access token, refreshed first (auth/token/refresh/) when it is older than a client
        would keep it; the refresh is part of the request that needed it, as in any client."""
        with session.lock:
            if time.monotonic() - session.access_at > TOKEN_REFRESH_SECONDS:
                answer = self.http.json("POST", "/api/v1/auth/token/refresh/", {"refresh": session.refresh})
                if answer.status != 200:
                    raise RuntimeError(f"token refresh answered {answer.status}: {answer.body[:200]!r}")
                body = answer.json()
                session.access, session.refresh = body["access"], body.get("refresh", session.refresh)
                session.access_at = time.monotonic()
                with self.oracle.lock:
                    self.oracle.token_refreshes += 1
            return session.access

    # --- metered usage -----------------------------------------------------------------------------------
    def usage(self, job: Job) -> Outcome:
        session = self._pick()
        body = {"service": self.service, "idempotency_key": self._key("u"), **self._tokens()}
        answer = self.http.json("POST", "/api/v1/usage/", body, headers=self._key_auth(session))
        if failed := _expect(answer, 201, "usage"):
            return failed
        self.oracle.charge(session.tenant.organization_id, [answer.json()["cost"]], events=1)
        return Outcome(ok=True, status=201)

    def batch(self, job: Job) -> Outcome:
        session = self._pick()
        events = [{"service": self.service, "idempotency_key": self._key("b"), **self._tokens()} for _ in range(self.batch_size)]
        answer = self.http.json("POST", "/api/v1/usage/batch/", {"events": events}, headers=self._key_auth(session))
        if failed := _expect(answer, 200, "batch"):
            return failed
        results = answer.json()["results"]
        created = [r for r in results if r.get("status") == 201]
        self.oracle.charge(session.tenant.organization_id, [r["usage"]["cost"] for r in created], events=len(created))
        if len(created) != len(events):
            refused = next(r for r in results if r.get("status") != 201)
            return Outcome(
                ok=False, status=200, error=f"batch: {len(events) - len(created)} events not 201, e.g. {refused}"[:300]
            )
        return Outcome(ok=True, status=200)

    # --- holds: reserve, then capture or release a moment later ---------------------------------------------
    def hold(self, job: Job) -> Outcome:
        session = self._pick()
        body = {"service": self.service, "idempotency_key": self._key("h"), "expires_in": HOLD_TTL_SECONDS, **HOLD_MAXIMA}
        answer = self.http.json("POST", "/api/v1/holds/", body, headers=self._key_auth(session))
        if failed := _expect(answer, 201, "hold"):
            return failed
        kind = "capture" if self.rng.random() < CAPTURE_SHARE else "release"
        follow_up = Job(due=self._later(0.2, 3.0), kind=kind, payload=(session, answer.json()["id"]))
        return Outcome(ok=True, status=201, follow_ups=[follow_up])

    def capture(self, job: Job) -> Outcome:
        session, hold_id = job.payload
        actual = {name: self.rng.randint(0, maximum) for name, maximum in HOLD_MAXIMA.items()}
        answer = self.http.json("POST", f"/api/v1/holds/{hold_id}/capture/", actual, headers=self._key_auth(session))
        if failed := _expect(answer, 201, "capture"):
            return failed
        self.oracle.charge(session.tenant.organization_id, [answer.json()["usage"]["cost"]], events=0)
        with self.oracle.lock:
            self.oracle.holds[hold_id] = "captured"
        return Outcome(ok=True, status=201)

    def release(self, job: Job) -> Outcome:
        session, hold_id = job.payload
        answer = self.http.json("POST", f"/api/v1/holds/{hold_id}/release/", headers=self._key_auth(session))
        if failed := _expect(answer, 200, "release"):
            return failed
        with self.oracle.lock:
            self.oracle.holds[hold_id] = "released"
        return Outcome(ok=True, status=200)

    # --- recharges through the sandbox provider ---------------------------------------------------------------
    def recharge(self, job: Job) -> Outcome:
        session = self._pick()
        amount = Decimal(self.rng.randint(100, 200)) / 100
        answer = self.http.json(
            "POST",
            "/api/v1/payments/recharge/",
            {"amount": str(amount), "provider": "sandbox"},
            headers={"Authorization": f"Bearer {self._access_token(session)}", "Idempotency-Key": self._key("r")},
        )
        if failed := _expect(answer, 201, "recharge"):
            return failed
        payment = answer.json()
        with self.oracle.lock:
            self.oracle.recharged.add(payment["id"])
        if payment["status"] != "pending":
            return Outcome(ok=False, status=201, error=f"recharge answered status {payment['status']}")
        succeeded = self.rng.random() >= FAILED_PAYMENT_SHARE
        event = {
            "id": f"evt_{self._key('e')}",
            "type": "payment.succeeded" if succeeded else "payment.failed",
            "payment_id": payment["id"],
            "amount": payment["amount"],
            "currency": payment["currency"],
        }
        return Outcome(ok=True, status=201, follow_ups=[Job(due=self._later(0.1, 1.0), kind="webhook", payload=(session, event))])

    def _notify(self, event: dict[str, Any]) -> Answer:
        body = json.dumps(event, separators=(",", ":")).encode()
        signature = sandbox_signature(body, secret=self.webhook_secret, timestamp=int(time.time()))
        return self.http.request(
            "POST",
            "/api/v1/payments/webhooks/sandbox/",
            body=body,
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature},
        )

    def webhook(self, job: Job) -> Outcome:
        session, event = job.payload
        answer = self._notify(event)
        if failed := _expect(answer, 200, "webhook"):
            return failed
        if answer.json() != {"received": True, "duplicate": False}:
            return Outcome(ok=False, status=200, error=f"webhook answered {answer.body[:200]!r}")
        succeeded = event["type"] == "payment.succeeded"
        amount = Decimal(event["amount"])
        organization_id = session.tenant.organization_id
        with self.oracle.lock:
            self.oracle.event_ids.append(event["id"])
            self.oracle.payments[event["payment_id"]] = ("succeeded" if succeeded else "failed", amount)
            if succeeded:
                self.oracle.credited[organization_id] = self.oracle.credited.get(organization_id, Decimal(0)) + amount
        follow_ups = []
        if self.rng.random() < REPLAYED_NOTIFICATION_SHARE:
            follow_ups.append(Job(due=self._later(0.5, 5.0), kind="webhook_replay", payload=(session, event)))
        return Outcome(ok=True, status=200, follow_ups=follow_ups)

    def webhook_replay(self, job: Job) -> Outcome:
        _, event = job.payload
        answer = self._notify(event)
        if failed := _expect(answer, 200, "webhook replay"):
            return failed
        if answer.json() != {"received": True, "duplicate": True}:
            return Outcome(ok=False, status=200, error=f"a replayed notification answered {answer.body[:200]!r}")
        return Outcome(ok=True, status=200)

    # --- reads: the dashboard's pages (session) and the API's (key) -----------------------------------------
    def _get(self, path: str, headers: dict[str, str], what: str) -> Outcome:
        answer = self.http.request("GET", path, headers=headers)
        return _expect(answer, 200, what) or Outcome(ok=True, status=200)

    def overview(self, job: Job) -> Outcome:
        return self._get("/dashboard/", {"Cookie": self._pick().cookie}, "overview page")

    def usage_page(self, job: Job) -> Outcome:
        return self._get("/dashboard/usage/", {"Cookie": self._pick().cookie}, "usage page")

    def usage_list(self, job: Job) -> Outcome:
        return self._get("/api/v1/usage/", self._key_auth(self._pick()), "usage list")

    def summary(self, job: Job) -> Outcome:
        group_by = self.rng.choice(["day", "service"])
        return self._get(f"/api/v1/usage/summary/?group_by={group_by}", self._key_auth(self._pick()), "summary")

    def balance(self, job: Job) -> Outcome:
        return self._get("/api/v1/balance/", self._key_auth(self._pick()), "balance")


# Requests each arrival of a kind makes, counting its follow-ups on average (a hold is captured or released;
# a recharge is notified, and sometimes notified again).
REQUESTS_PER_ARRIVAL = {"hold": 2, "recharge": 2 + REPLAYED_NOTIFICATION_SHARE}
# The mix by arrivals (weights): mostly single debits, then reads, batches, holds and recharges.
MIX = {
    "usage": 62,
    "batch": 6,
    "hold": 6,
    "recharge": 1.5,
    "overview": 3,
    "usage_page": 2,
    "usage_list": 3,
    "summary": 3,
    "balance": 6,
}
