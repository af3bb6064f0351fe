"""A second Django process with a cache of its own, for the cross-process cache tests.

`python -m tests.cache_peer` (with DJANGO_SETTINGS_MODULE and DATABASE_NAME pointing at the test
database) answers `{"ready": true}`, then reads one JSON request per line on stdin
(`{"path", "secret", "body"}`), POSTs it through the whole stack (Django's test Client: middleware,
DRF, authentication, throttling, the debit) and answers one JSON line: the status, the body and the
SQL statements it sent."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
from pathlib import Path
from typing import Any

import django

ANSWER_TIMEOUT = 30


def main() -> None:
    django.setup()
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        with CaptureQueriesContext(connection) as queries:
            response = client.post(
                request["path"],
                data=json.dumps(request["body"]),
                content_type="application/json",
                headers={"Authorization": f"Bearer {request['secret']}"},
            )
        answer = {
            "status": response.status_code,
            "body": response.json(),
            "queries": [q["sql"] for q in queries.captured_queries],
        }
        print(json.dumps(answer), flush=True)


class Peer:
    """The test's handle on a running peer process."""

    def __init__(self, *, base_dir: Path, database_name: str, log_path: Path) -> None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "billing_site.settings_test",
            "DATABASE_NAME": database_name,
            "PYTHONUNBUFFERED": "1",
        }
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.cache_peer"],
            cwd=base_dir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.log_path = log_path
        assert self._answer() == {"ready": True}

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=ANSWER_TIMEOUT):
                raise AssertionError(f"the cache peer did not answer in {ANSWER_TIMEOUT} s; see {self.log_path}")
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the cache peer exited ({self.process.poll()}); see {self.log_path}")
        return json.loads(line)

    def post(self, path: str, *, secret: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"path": path, "secret": secret, "body": body}) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self._log.close()


if __name__ == "__main__":
    main()
