"""The gateway's gunicorn worker class (gunicorn_gateway.conf.py): uvicorn's, with a shutdown that charges the calls
it cuts. On SIGTERM gunicorn gives a worker `graceful_timeout`, then SIGKILLs it. uvicorn_worker leaves uvicorn
waiting for its streams without limit (past that kill), and once uvicorn has stopped serving it raises the SIGTERM
again under SIG_DFL, which ended the process before the event loop's other tasks (the calls cut by the shutdown,
the drains of clients that had left) could run their charge: their holds expired, and what they relayed was never
charged. Here uvicorn gives up on its streams before the kill, and the SIGTERM ends the process through SystemExit,
so asyncio.run cancels those tasks and lets each charge first.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]

# Of gunicorn's grace period, what is kept for the calls cut at its end to be charged (at least half of it).
CHARGE_SECONDS = 10


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


class GatewayWorker(UvicornWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        graceful = float(self.cfg.graceful_timeout)
        self.config.timeout_graceful_shutdown = max(graceful - CHARGE_SECONDS, graceful / 2)

    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGTERM, _exit)
