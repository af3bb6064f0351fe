"""The processes the soak runs beside gunicorn (Celery's worker and beat), the ones it measures (Redis), and the
monitor that samples them all each minute."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import env

WORKER_READY_TIMEOUT = 60.0


class Celery:
    """`celery worker` (prefork) and `celery beat` as `make run` starts them, the worker consuming only the
    soak's queue (beat sends there too: bench/soak_settings.py makes it the default queue)."""

    def __init__(self, *, env: dict[str, str], queue: str, concurrency: int, log_path: Path, schedule: Path):
        self.env, self.queue, self.log_path, self.schedule = env, queue, log_path, schedule
        self.worker_argv = [
            "worker",
            f"--concurrency={concurrency}",
            "-Q",
            queue,
            "-n",
            f"{queue}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        self.worker: subprocess.Popen[bytes] | None = None
        self.beat: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        from bench import web

        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "billing_site", *argv, "--loglevel=INFO"],
                cwd=env.BASE_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=web._die_with_parent(),
                env=self.env,
            )

    def start(self) -> None:
        self.worker = self._spawn(self.worker_argv)
        self.beat = self._spawn(["beat", "--schedule", str(self.schedule)])
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        while time.monotonic() < deadline:
            log = self.log_path.read_text(errors="replace")
            if " ready." in log and "beat: Starting" in log:
                return
            for name, process in (("worker", self.worker), ("beat", self.beat)):
                if process.poll() is not None:
                    raise SystemExit(f"soak: Celery {name} exited with {process.returncode}; see {self.log_path}")
            time.sleep(0.2)
        raise SystemExit(f"soak: Celery was not ready within {WORKER_READY_TIMEOUT:.0f} s; see {self.log_path}")

    def worker_processes(self):
        from bench import cpu

        return cpu.tree(self.worker.pid) if self.worker else []

    def beat_processes(self):
        from bench import cpu

        return cpu.tree(self.beat.pid) if self.beat else []

    def stop(self) -> None:
        for process in (self.beat, self.worker):
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)  # the worker's warm shutdown: running tasks finish
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        for path in self.schedule.parent.glob(self.schedule.name + "*"):  # the shelve beat kept its schedule in
            path.unlink(missing_ok=True)

    def forget_queue(self) -> None:
        """Drop the queue and its bindings from the broker: nothing of the run stays behind."""
        from billing_site.celery import app

        with app.connection_for_write() as broker:
            broker.default_channel.client.delete(self.queue, f"_kombu.binding.{self.queue}")

    def backlog(self) -> int | None:
        from django_redis import get_redis_connection

        try:
            return int(get_redis_connection("default").llen(self.queue))
        except Exception:  # noqa: BLE001 - a figure for the report, never a reason to stop
            return None


def redis_processes():
    """The Redis server, when it runs on this machine (the embedded one, or a local REDIS_URL)."""
    import psutil
    from django_redis import get_redis_connection

    try:
        return [psutil.Process(int(get_redis_connection("default").info("server")["process_id"]))]
    except Exception:  # noqa: BLE001 - a remote Redis has no process here
        return []


def redis_used_memory() -> int | None:
    from django_redis import get_redis_connection

    try:
        return int(get_redis_connection("default").info("memory")["used_memory"])
    except Exception:  # noqa: BLE001
        return None


# --- the run ------------------------------------------------------------------------------------------------


class Monitor(threading.Thread):
    """At the end of the warm-up and of each measured minute: the memory of every process, Redis's own figure,
    the worker's queue, and the CPU each group used since the last sample (`other` = the rest of the machine)."""

    def __init__(
        self,
        *,
        groups,
        clock: Callable[[], float],
        warmup: float,
        minutes: int,
        backlog: Callable[[], int | None],
        progress: Callable[[dict[str, Any]], None] | None = None,
    ):
        from bench import cpu

        super().__init__(name="soak-monitor", daemon=True)
        self.groups, self.clock, self.warmup, self.minutes, self.backlog = groups, clock, warmup, minutes, backlog
        self.progress = progress
        self.samples: list[dict[str, Any]] = []
        self.stopped = threading.Event()
        self.covers: str | int = "warm-up"
        self.window = cpu.Window(groups).start()

    def sample(self, label: str) -> dict[str, Any]:
        from bench import cpu, soak_memory

        cores, self.window = self.window.stop(), cpu.Window(self.groups).start()
        row = {
            "label": label,
            "at_s": round(self.clock(), 1),
            "cpu_cores": cores,
            "cpu_covers": self.covers,
            "processes": soak_memory.snapshot(self.groups),
            "redis_used_memory": redis_used_memory(),
            "celery_backlog": self.backlog(),
        }
        self.covers = 1 if self.covers == "warm-up" else int(self.covers) + 1
        self.samples.append(row)
        if self.progress is not None:
            self.progress(row)
        return row

    def run(self) -> None:
        marks = [("after warm-up", self.warmup)] + [(f"minute {m}", self.warmup + 60.0 * m) for m in range(1, self.minutes)]
        for label, at in marks:
            if self.stopped.wait(timeout=max(0.0, at - self.clock())):
                return
            self.sample(label)


def progress_line(samples: list, row: dict[str, Any], *, warmup: float, minutes: int) -> str:
    """One line per finished minute while the soak runs (requests due in it and answered so far)."""
    from bench.soak_load import bucket_of, summarize_kind

    covers = row["cpu_covers"]
    index = -1 if covers == "warm-up" else int(covers) - 1
    bucket = [s for s in list(samples) if bucket_of(s.due, warmup=warmup, minutes=minutes) == index]
    usage = summarize_kind([s for s in bucket if s.kind == "usage"])
    cores = row["cpu_cores"]
    seconds = warmup if index < 0 else 60.0
    return (
        f"  {covers!s:>7}: {len(bucket) / seconds:6.1f} req/s, {sum(not s.ok for s in bucket)} errors, usage p50/p99 "
        f"{usage['p50_ms']}/{usage['p99_ms']} ms, cores app {cores.get('gunicorn', 0) + cores.get('postgres', 0):.2f} "
        f"other {cores.get('other', 0):.2f}, Celery backlog {row['celery_backlog']}"
    )
