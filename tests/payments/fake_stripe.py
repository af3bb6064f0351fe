"""A fake Stripe: a real HTTP server on loopback speaking the one endpoint auto top-up calls,
`POST /v1/payment_intents` (off-session, confirmed at once), the way Stripe answers it. The official
`stripe` package talks to it over HTTP (settings.STRIPE_API_BASE); nothing in our code is mocked.

Saved methods, named like Stripe's test PaymentMethods: `pm_card_visa` is charged; `pm_card_chargeDeclined`
is declined (402 card_error `card_declined`); `pm_card_authenticationRequired` needs its holder
(402 card_error `authentication_required`); `pm_outage` answers 500 (no definitive answer). As Stripe
does, a repeated Idempotency-Key answers the first result again and charges nothing more."""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

DECLINES = {
    "pm_card_chargeDeclined": ("card_declined", "Your card was declined."),
    "pm_card_authenticationRequired": ("authentication_required", "Your card requires authentication."),
}


@dataclass
class StripeRequest:
    method: str
    path: str
    headers: dict[str, str]
    params: dict[str, str]


@dataclass
class FakeStripe:
    requests: list[StripeRequest] = field(default_factory=list)
    charges: list[dict] = field(default_factory=list)  # succeeded PaymentIntents, once each
    _answers: dict[str, tuple[int, dict]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def start(self) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                params = {key: values[0] for key, values in parse_qs(body, keep_blank_values=True).items()}
                status, answer, replayed = fake.answer(self.path, dict(self.headers.items()), params)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Request-Id", f"req_fake_{next(fake._ids)}")
                if replayed:
                    self.send_header("Idempotent-Replayed", "true")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        server_class = type("Server", (ThreadingHTTPServer,), {"daemon_threads": True})
        self.server = server_class(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def intent_requests(self) -> list[StripeRequest]:
        return [r for r in self.requests if r.path == "/v1/payment_intents"]

    def answer(self, path: str, headers: dict[str, str], params: dict[str, str]) -> tuple[int, dict, bool]:
        with self._lock:
            self.requests.append(StripeRequest("POST", path, headers, params))
            if path != "/v1/payment_intents":
                return 404, {"error": {"type": "invalid_request_error", "message": f"Unrecognized request URL ({path})."}}, False
            if not headers.get("Authorization", "").startswith("Bearer sk_"):
                return 401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided."}}, False
            key = headers.get("Idempotency-Key", "")
            if key and key in self._answers:
                status, answer = self._answers[key]
                return status, answer, True
            status, answer = self._intent(params)
            if key and status < 500:  # Stripe does not keep answers to its own errors
                self._answers[key] = (status, answer)
            return status, answer, False

    def _intent(self, params: dict[str, str]) -> tuple[int, dict]:
        method = params.get("payment_method", "")
        if method == "pm_outage":
            return 500, {"error": {"type": "api_error", "message": "An unknown error occurred."}}
        if params.get("off_session") != "true" or params.get("confirm") != "true" or not params.get("customer"):
            return 400, {"error": {"type": "invalid_request_error", "message": "Missing off_session/confirm/customer."}}
        intent = {
            "id": f"pi_fake_{next(self._ids)}",
            "object": "payment_intent",
            "amount": int(params["amount"]),
            "amount_received": 0,
            "currency": params["currency"],
            "customer": params["customer"],
            "payment_method": method,
            "metadata": {k[len("metadata[") : -1]: v for k, v in params.items() if k.startswith("metadata[")},
            "livemode": False,
            "status": "requires_payment_method",
        }
        if method in DECLINES:
            code, message = DECLINES[method]
            error = {"type": "card_error", "code": code, "message": message, "payment_intent": intent}
            if code == "card_declined":
                error["decline_code"] = "generic_decline"
            return 402, {"error": error}
        if not method.startswith("pm_card_"):
            return 400, {
                "error": {"type": "invalid_request_error", "code": "resource_missing", "message": "No such PaymentMethod"}
            }
        intent.update(status="succeeded", amount_received=intent["amount"])
        self.charges.append(intent)
        return 200, intent
