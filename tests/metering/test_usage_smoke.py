from decimal import Decimal

from payments import ledger
from tests.factories import service_with_price


def test_usage_debit_replay_and_conflict(organization, live_client):
    service_with_price(slug="gpt-4o-mini", calc_method="TOKENS", input_price="0.15", output_price="0.60")
    ledger.wallet_adjust(organization_id=organization.pk, amount=Decimal("1"), reason="seed", created_by_id=None)
    body = {"service": "gpt-4o-mini", "idempotency_key": "k1", "input_tokens": 1, "output_tokens": 0}
    first = live_client.post("/api/v1/usage/", body, format="json")
    assert first.status_code == 201, first.content
    assert first.json()["cost"] == "0.000000150000"
    assert first.json()["balance_after"] == "0.999999850000"
    again = live_client.post("/api/v1/usage/", body, format="json")
    assert again.status_code == 200
    assert again.json() == first.json()
    conflict = live_client.post("/api/v1/usage/", {**body, "input_tokens": 2}, format="json")
    assert conflict.status_code == 409
    batch = live_client.post(
        "/api/v1/usage/batch/",
        {
            "events": [
                {"service": "gpt-4o-mini", "idempotency_key": f"b{i}", "input_tokens": 1000000, "output_tokens": 0}
                for i in range(8)
            ]
            + [body]
        },
        format="json",
    )
    assert batch.status_code == 200, batch.content
    statuses = [r["status"] for r in batch.json()["results"]]
    assert statuses == [201] * 6 + [402, 402, 200], batch.json()
    balance = live_client.get("/api/v1/balance/").json()
    assert balance["balance"] == "0.099999850000"
    summary = live_client.get("/api/v1/usage/summary/?group_by=service").json()
    assert summary["rows"][0]["events"] == 7
    hold = live_client.post(
        "/api/v1/holds/", {"service": "gpt-4o-mini", "idempotency_key": "h1", "amount": "0.05"}, format="json"
    )
    assert hold.status_code == 201, hold.content
    assert live_client.get("/api/v1/balance/").json()["available"] == "0.049999850000"
    captured = live_client.post(
        f"/api/v1/holds/{hold.json()['id']}/capture/", {"input_tokens": 10, "output_tokens": 10}, format="json"
    )
    assert captured.status_code == 201, captured.content
    assert live_client.get("/api/v1/balance/").json()["held"] == "0.000000000000"
    listing = live_client.get("/api/v1/usage/")
    assert listing.json()["count"] == 8
