"""Rendered documents cost a hundred times an ordinary request, so their downloads have a limit of
their own per person or key (THROTTLE_DOCUMENTS_PER_MINUTE), shared by the API and the dashboard;
ordinary requests are not counted against it."""

import pytest

from accounts.models import Organization
from statements.models import Statement
from tests.conftest import jwt_client
from tests.payments.payment_helpers import settled_sandbox_payment
from tests.statements.activity import month_issue, month_live

pytestmark = pytest.mark.django_db


def month_live_issue(organization: Organization) -> Statement:
    month_live(organization)
    return month_issue(organization)


@pytest.fixture(autouse=True)
def _one_window(monkeypatch, settings):
    monkeypatch.setattr("billing_site.api.throttling.clock", lambda: 1_800_000_030.0)
    settings.THROTTLE_DOCUMENTS_PER_MINUTE = 3


def test_the_api_and_the_dashboard_share_one_download_limit(organization, owner, client):
    payment = settled_sandbox_payment(organization, "5.00")
    statement = month_live_issue(organization)
    api = jwt_client(owner)
    client.force_login(owner)
    statuses = [
        api.get(f"/api/v1/payments/{payment.pk}/receipt/").status_code,
        api.get(f"/api/v1/statements/{statement.pk}/pdf/").status_code,
        client.get(f"/dashboard/statements/{statement.pk}/csv/").status_code,
    ]
    assert statuses == [200, 200, 200]
    refused = api.get(f"/api/v1/statements/{statement.pk}/csv/")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "throttled"
    assert 1 <= int(refused["Retry-After"]) <= 61
    page = client.get(f"/dashboard/payments/{payment.pk}/receipt.pdf")
    assert page.status_code == 429 and 1 <= int(page["Retry-After"]) <= 61
    # everything else goes on
    assert api.get(f"/api/v1/statements/{statement.pk}/").status_code == 200
    assert api.get("/api/v1/balance/").status_code == 200


def test_each_person_has_their_own_download_limit(organization, owner, other_organization, other_owner):
    statement = month_live_issue(organization)
    other = month_live_issue(other_organization)
    mine, theirs = jwt_client(owner), jwt_client(other_owner)
    assert [mine.get(f"/api/v1/statements/{statement.pk}/pdf/").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert theirs.get(f"/api/v1/statements/{other.pk}/pdf/").status_code == 200
