"""The gateway under test: its real ASGI application (gateway.asgi) served by uvicorn on a real socket, in a
thread of the test process, so the tests drive it with the real `openai` SDK over HTTP and it writes to the
test database (tests using it need `transactional_db`)."""

from __future__ import annotations

import asyncio
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from django.db import connections

WORKER_THREADS = 8


class GatewayServer:
    def __init__(self) -> None:
        from gateway.asgi import application

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        config = uvicorn.Config(application, lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._executor = ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="gateway-db")
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, name="gateway-server", daemon=True)

    def _serve(self) -> None:
        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            self.loop.set_default_executor(self._executor)
            await self._server.serve(sockets=[self._socket])
            self._close_connections()  # blocking is fine now: nothing else runs on this loop

        asyncio.run(serve())

    def _close_connections(self) -> None:
        """Each worker thread closes its own database connection (Django's are per thread), so the test
        database can be dropped: the barrier makes every thread take exactly one closing task."""
        barrier = threading.Barrier(WORKER_THREADS)

        def close() -> None:
            barrier.wait(timeout=10)
            connections.close_all()

        for future in [self._executor.submit(close) for _ in range(WORKER_THREADS)]:
            future.result(timeout=15)

    def start(self) -> GatewayServer:
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                return self
            self._thread.join(0.01)
        raise RuntimeError("the gateway test server did not start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)
        if self._thread.is_alive():
            raise RuntimeError("the gateway test server did not stop")
        self._socket.close()
