"""The OpenAPI description validates, and the live app honours it: schemathesis drives every
operation with generated requests (with a real JWT and a real API key) and checks that nothing
answers 5xx and that every response matches the schema."""

import os
from decimal import Decimal

import pytest
import schemathesis
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis import checks as st_checks

from accounts import services as account_services
from billing_site.wsgi import application
from payments import ledger
from tests.conftest import jwt_client
from tests.factories import service_with_price


def test_schema_validates_with_no_warnings(db, tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert "/api/v1/usage/" in (tmp_path / "schema.yaml").read_text()


def test_schema_documents_errors_auth_and_headers(db, client):
    schema = client.get("/api/schema/?format=json").json()
    usage = schema["paths"]["/api/v1/usage/"]["post"]
    assert {"200", "201", "400", "401", "402", "403", "404", "409", "415", "429"} <= set(usage["responses"])
    assert usage["responses"]["402"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert {p["name"] for p in usage["parameters"]} >= {"Idempotency-Key", "X-Organization"}
    assert set(schema["components"]["securitySchemes"]) == {"ApiKey", "JWT"}


def test_docs_pages_are_served_without_a_cdn(db, client):
    for url in ("/api/docs/", "/api/redoc/"):
        page = client.get(url).content.decode()
        assert "cdn." not in page and "unpkg" not in page and "jsdelivr" not in page


@pytest.fixture
def principals(db):
    """An organization with money, a service per method, an owner (JWT) and a live API key."""
    from tests.factories import UserFactory, organization_create

    owner = UserFactory()
    organization = organization_create(name="Fuzz", owner=owner)
    ledger.wallet_adjust(organization_id=organization.pk, amount=Decimal(1000), reason="fuzz", created_by_id=None)
    service_with_price(slug="gpt", calc_method="TOKENS", input_price="1", output_price="2")
    service_with_price(slug="ping", calc_method="REQUEST", unit_price="0.001")
    key = account_services.api_key_create(organization=organization, name="fuzz", created_by=owner)
    token = jwt_client(owner)._credentials["HTTP_AUTHORIZATION"]
    return {"jwt": {"Authorization": token}, "key": {"Authorization": f"Bearer {key.secret}"}}


@pytest.fixture
def kept_connection():
    """Requests go through the real WSGI handler in-process. Like Django's test client, keep it
    from closing the test's database connection (and its transaction) after each request."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.response_headers_conformance,
]
EXAMPLES_PER_OPERATION = int(os.environ.get("FUZZ_EXAMPLES", "12"))


def _summary(failure: BaseException) -> str:
    """The gist of a schemathesis failure group: what failed, and how to reproduce it."""
    text = "\n".join(str(e) for e in getattr(failure, "exceptions", [failure]))
    keep = [
        line.strip()
        for line in text.splitlines()
        if line.strip().startswith(("- ", "Received", "Documented", "curl", "[", "Path"))
    ]
    return "\n".join(keep[:20]) or text[:1500]


def _fuzz(api_schema, headers) -> dict[str, str]:
    """Drive every operation with generated cases; answer {operation: first failure}."""
    failures = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as failure:  # noqa: BLE001 - collected, then reported together
            failures[operation.label] = _summary(failure)
    return failures


@pytest.mark.slow
@pytest.mark.parametrize("principal", ["jwt", "key"])
def test_api_honours_its_schema(principals, principal, kept_connection):
    api_schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
    failures = _fuzz(api_schema, principals[principal])
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/v1/usage/", {"service": "ping\x00", "idempotency_key": "a"}),
        ("/api/v1/usage/", {"service": "ping", "idempotency_key": "a\x00"}),
        ("/api/v1/usage/", {"service": "ping", "idempotency_key": "a", "metadata": {"k": ["x\x00"]}}),
        ("/api/v1/holds/", {"service": "gpt\x00", "idempotency_key": "h", "amount": "1"}),
    ],
)
def test_nul_characters_are_refused_not_crashed_on(principals, url, body):
    # Found by the fuzzer: PostgreSQL text cannot hold NUL, which used to surface as a 500.
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=principals["key"]["Authorization"])
    response = client.post(url, body, format="json")
    assert response.status_code in (400, 404), response.content
    assert response.json()["error"]["code"] in ("invalid_request", "service_not_found")


def test_nul_in_a_query_filter_is_refused(principals):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=principals["key"]["Authorization"])
    assert client.get("/api/v1/usage/", {"service": "a\x00b"}).status_code == 400


TAGS = {"auth", "account", "keys", "services", "usage", "holds", "balance", "payments", "budgets", "staff"}
PAGINATED_LISTS = {
    ("get", "/api/v1/usage/"),
    ("get", "/api/v1/api-keys/"),
    ("get", "/api/v1/ledger/"),
    ("get", "/api/v1/payments/"),
    ("get", "/api/v1/statements/"),
    ("get", "/api/v1/grants/"),
    ("get", "/api/v1/budgets/"),
    ("get", "/api/v1/admin/organizations/{slug}/grants/"),
}


def _operations(schema):
    return [(method, path, operation) for path, operations in schema["paths"].items() for method, operation in operations.items()]


def test_every_operation_is_documented_for_api_users(db, client):
    """A summary, a description and one tag a reader can browse by, on every operation; no internal notes."""
    schema = client.get("/api/schema/?format=json").json()
    assert {tag["name"] for tag in schema["tags"]} == TAGS
    undocumented = []
    for method, path, operation in _operations(schema):
        summary, description, tags = operation.get("summary", ""), operation.get("description", ""), operation.get("tags", [])
        if not summary or len(description) < 40 or len(tags) != 1 or tags[0] not in TAGS:
            undocumented.append((method, path, summary, tags))
        for internal in ("Celery", "select_for_update", "docs/contract.md", "TODO"):
            assert internal not in description, (method, path, internal)
    assert not undocumented, undocumented


def test_writes_carry_request_and_response_examples(db, client):
    schema = client.get("/api/schema/?format=json").json()
    for method, path in [
        ("post", "/api/v1/usage/"),
        ("post", "/api/v1/usage/batch/"),
        ("post", "/api/v1/holds/"),
        ("post", "/api/v1/api-keys/"),
        ("post", "/api/v1/payments/recharge/"),
        ("post", "/api/v1/auth/token/"),
        ("post", "/api/v1/admin/organizations/{slug}/adjust/"),
        ("post", "/api/v1/admin/organizations/{slug}/grants/"),
        ("post", "/api/v1/budgets/"),
        ("patch", "/api/v1/budgets/{budget_id}/"),
        ("patch", "/api/v1/api-keys/{api_key_id}/"),
        ("post", "/api/v1/admin/upstreams/"),
        ("patch", "/api/v1/admin/upstreams/{name}/"),
        ("post", "/api/v1/admin/models/"),
        ("patch", "/api/v1/admin/models/{model}/"),
    ]:
        operation = schema["paths"][path][method]
        assert operation["requestBody"]["content"]["application/json"].get("examples"), (method, path)
        answered = [r for s, r in operation["responses"].items() if s.startswith("2")]
        assert any(r.get("content", {}).get("application/json", {}).get("examples") for r in answered), (method, path)


def test_list_endpoints_are_typed_as_paginated_lists(db, client):
    schema = client.get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]
    paginated = set()
    for method, path, operation in _operations(schema):
        if not any(p["name"] == "page" for p in operation.get("parameters", [])):
            continue
        reference = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        page = components[reference.rsplit("/", 1)[-1]]
        assert {"count", "next", "previous", "results"} <= set(page["properties"]), (method, path)
        assert page["properties"]["results"]["type"] == "array", (method, path)
        assert operation["operationId"].endswith("_list"), (method, path, operation["operationId"])
        paginated.add((method, path))
    assert paginated == PAGINATED_LISTS


def test_the_dashboard_links_to_the_api_docs(db, owner, organization):
    from django.test import Client

    client = Client()
    client.force_login(owner)
    page = client.get("/dashboard/").content.decode()
    assert '<a href="/api/docs/">API documentation</a>' in page
    assert client.get("/api/docs/").status_code == 200
