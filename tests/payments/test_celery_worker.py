"""A real Celery worker process, on the real embedded Redis broker and the test database, settles a
recharge whose signed webhook arrived through the API (docs/contract.md §3: "settlement handed to Celery").

Nothing is mocked. The worker consumes a queue of its own (a fresh name per run), so tasks left by
other runs or a development worker on the same Redis can neither reach it nor steal its work."""

import os
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from billing_site.celery import app as celery_app
from payments.models import Payment, PaymentStatus, WebhookEvent
from tests.payments.helpers import assert_money_invariants, wallet_of
from tests.payments.payment_helpers import RECHARGE_URL, assert_credited_once, post_sandbox, sandbox_body

D = Decimal
BASE_DIR = Path(settings.BASE_DIR)
START_TIMEOUT = 30
SETTLE_TIMEOUT = 30

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def celery_worker(transactional_db, settings):
    """Start `celery worker` as a subprocess pointed at this test database and a private queue;
    route this process's tasks to that queue; always stop the worker and clean the queue up."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    queue = f"tollgate-test-{uuid.uuid4().hex[:12]}"
    node = f"{queue}@%h"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "billing_site.settings_test",
        "DATABASE_NAME": connection.settings_dict["NAME"],
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "PYTHONUNBUFFERED": "1",
    }
    log = tempfile.NamedTemporaryFile(prefix="celery-worker-", suffix=".log", delete=False)  # noqa: SIM115 - closed below
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "billing_site",
        "worker",
        "--pool=solo",
        "--concurrency=1",
        "-Q",
        queue,
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "-n",
        node,
        "--loglevel=INFO",
    ]
    process = subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    previous_queue = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = queue
    try:
        _wait_until_ready(process, Path(log.name))
        yield {"process": process, "queue": queue, "log": Path(log.name)}
    finally:
        celery_app.conf.task_default_queue = previous_queue
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
        _forget_queue(queue)
        Path(log.name).unlink(missing_ok=True)


def _wait_until_ready(process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        output = log.read_text(errors="replace")
        if " ready." in output:
            return
        if process.poll() is not None:
            pytest.fail(f"the Celery worker exited with {process.returncode} before it was ready:\n{output[-5000:]}")
        time.sleep(0.1)
    pytest.fail(f"the Celery worker was not ready within {START_TIMEOUT} s:\n{log.read_text(errors='replace')[-5000:]}")


def _forget_queue(queue: str) -> None:
    """Drop what the run left on the shared broker: the private queue and its bindings."""
    with celery_app.connection_for_write() as broker:
        broker.default_channel.client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


def _wait_for(predicate, *, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}; worker log:\n{log.read_text(errors='replace')[-5000:]}")


def test_a_real_worker_settles_a_sandbox_recharge_once(celery_worker, owner_client, api_client, organization):
    log = celery_worker["log"]
    response = owner_client.post(RECHARGE_URL, {"amount": "42.50", "provider": "sandbox"}, format="json")
    assert response.status_code == 201, response.content
    payment = Payment.objects.get(pk=response.json()["id"])
    assert payment.status == PaymentStatus.PENDING

    body = sandbox_body(payment, event_id=f"evt_worker_{uuid.uuid4().hex}")
    delivered = post_sandbox(api_client, body)

    assert delivered.status_code == 200, delivered.content
    assert delivered.json() == {"received": True, "duplicate": False}
    _wait_for(
        lambda: Payment.objects.get(pk=payment.pk).status == PaymentStatus.SUCCEEDED,
        timeout=SETTLE_TIMEOUT,
        what="the worker to settle the payment",
        log=log,
    )
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("42.50")
    assert WebhookEvent.objects.get().processed_at is not None
    assert "payments.tasks.payment_settle" in log.read_text(errors="replace")

    # The same event again is a duplicate; a second, distinct success event reaches the worker and credits nothing.
    assert post_sandbox(api_client, body).json() == {"received": True, "duplicate": True}
    second = post_sandbox(api_client, sandbox_body(payment, event_id=f"evt_worker_{uuid.uuid4().hex}"))
    assert second.json() == {"received": True, "duplicate": False}
    _wait_for(
        lambda: not WebhookEvent.objects.filter(processed_at__isnull=True).exists(),
        timeout=SETTLE_TIMEOUT,
        what="the worker to process the second event",
        log=log,
    )
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("42.50")
    assert_money_invariants([organization.pk])
