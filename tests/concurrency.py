"""Real threads on real transactions, for the concurrency tests: every thread is released together,
joined with a timeout, and closes its own database connection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection

JOIN_TIMEOUT_SECONDS = 60


def run_concurrently(count: int, work: Callable[[int], Any], *, reraise: bool = False) -> list[Any]:
    """Run work(0..count-1) in `count` threads released together; answer each one's result, or the
    exception it raised (re-raised here instead when `reraise`). Fails if a thread hangs."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    raised: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = work(index)
        except BaseException as exc:  # noqa: BLE001 - handed to the test, which decides
            results[index] = exc
            raised.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN_TIMEOUT_SECONDS)
    assert not any(thread.is_alive() for thread in threads), "a thread hung (deadlock?)"
    if reraise and raised:
        raise raised[0]
    return results
