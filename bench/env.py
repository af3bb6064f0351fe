"""Where the bench runs: which database, the environment the app needs, and the machine.

With DATABASE_URL set, the bench uses that database as it is (its organizations are told apart by
the slug prefix `bench-`). Without it, it uses a database of its own, `tollgate_bench`, on the
embedded PostgreSQL under `.data/`, so that millions of bench rows never land in the development
database; the app is then pointed at it with DATABASE_URL (and TOLLGATE_ENV=development, which the
settings would otherwise infer as production from DATABASE_URL).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
BENCH_DATABASE = "tollgate_bench"
# The per-key rate limits (60,000 requests and 1.2M batch events per minute by default) would cap the
# hot key; the bench raises them (unless set) so that it measures the debit path, not the limiter.
# The limiter still runs: its Redis round trip is part of every request measured.
THROTTLE_OVERRIDES = {"THROTTLE_KEY_PER_MINUTE": "100000000", "THROTTLE_BATCH_EVENTS_PER_MINUTE": "10000000000"}


@dataclass
class Target:
    description: str
    dedicated: bool  # our own database on the embedded server (may be dropped with --fresh)
    postmaster_pid: int | None  # the local server's postmaster, to measure its CPU
    conninfo: str = ""  # filled once Django is set up
    database: str = ""  # its name, to tell its server processes from other databases' ones


def _embedded_postmaster_pid() -> int | None:
    from billing_site import embedded

    try:
        return int((embedded.PG_DIR / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def prepare_database(*, fresh: bool, database: str = BENCH_DATABASE) -> Target:
    """Decide the database (`database` on the embedded server, unless DATABASE_URL is set) and export
    the environment for this process and its children. Must run before Django is set up."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_site.settings")
    for name, value in THROTTLE_OVERRIDES.items():
        os.environ.setdefault(name, value)
    if os.environ.get("DATABASE_URL"):
        if fresh:
            raise SystemExit("bench: --fresh only drops the bench's own database; it is refused with DATABASE_URL set.")
        return Target(
            description="DATABASE_URL (bench rows told apart by the slug prefix bench-)", dedicated=False, postmaster_pid=None
        )

    import psycopg

    from billing_site import embedded

    params = embedded.ensure_postgres()
    host = params["HOST"]
    with psycopg.connect(host=host, user=params["USER"], dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if exists and fresh:
            print(f"bench: --fresh: dropping the database {database}")
            conn.execute(f"DROP DATABASE {database} WITH (FORCE)")
            exists = None
        if not exists:
            conn.execute(f"CREATE DATABASE {database}")
    os.environ["DATABASE_URL"] = f"postgres://{params['USER']}@/{database}?host={host}"
    os.environ.setdefault("TOLLGATE_ENV", "development")
    return Target(
        description=f"embedded PostgreSQL, database {database} (the bench's own)",
        dedicated=True,
        postmaster_pid=_embedded_postmaster_pid(),
    )


def libpq_conninfo() -> str:
    """The psycopg connection string of Django's default database, exactly as the app connects."""
    from django.db import connection
    from psycopg.conninfo import make_conninfo

    params = connection.get_connection_params()
    # psycopg's own options (prepare_threshold, cursor_factory, the adapters) are not libpq's.
    return make_conninfo(
        "",
        **{k: v for k, v in params.items() if isinstance(v, str | int) and not isinstance(v, bool) and k != "prepare_threshold"},
    )


def app_environment() -> dict[str, str]:
    """The environment gunicorn gets: ours (DATABASE_URL, TOLLGATE_ENV …), plus the Redis URL the
    settings resolved, so the workers do not each probe for it."""
    from django.conf import settings

    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "bench.ceiling_settings"  # the project's settings plus the ceiling view's URL
    env.setdefault("REDIS_URL", settings.REDIS_URL)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return ((out.stdout or out.stderr).strip().splitlines() or ["unknown"])[0]


def machine_info() -> dict[str, object]:
    import django
    import psycopg
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT version(), current_setting('synchronous_commit'), current_setting('fsync'), "
            "current_setting('shared_buffers'), current_setting('max_connections')"
        )
        pg_version, sync_commit, fsync, shared_buffers, max_connections = cursor.fetchone()
    try:
        import gunicorn

        gunicorn_version = gunicorn.__version__
    except ImportError:
        gunicorn_version = "missing"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "postgresql": pg_version.split(" on ")[0],
        "postgresql_settings": {
            "synchronous_commit": sync_commit,
            "fsync": fsync,
            "shared_buffers": shared_buffers,
            "max_connections": max_connections,
        },
        "python": sys.version.split()[0],
        "django": django.get_version(),
        "psycopg": psycopg.__version__,
        "gunicorn": gunicorn_version,
        "wrk": _version(["wrk", "--version"]) if shutil.which("wrk") else "missing",
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
