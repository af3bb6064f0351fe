"""Small request helpers shared by the metering API tests."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from types import SimpleNamespace

import pytest

from metering.services import batch, holds, usage

USAGE = "/api/v1/usage/"
BATCH = "/api/v1/usage/batch/"
HOLDS = "/api/v1/holds/"


def ping(client, key: str, **extra):
    """POST usage/ for the REQUEST-priced `ping` service ($0.001 per request)."""
    return client.post(USAGE, {"service": "ping", "idempotency_key": key, **extra}, format="json")


@contextmanager
def recorded_at(when: datetime) -> Iterator[None]:
    """Usage written inside the block carries `when` as its time and day (the ledger keeps the real clock)."""
    with pytest.MonkeyPatch.context() as patch:
        for module in (usage, batch, holds):
            patch.setattr(module, "timezone", SimpleNamespace(now=lambda: when))
        yield
