"""(2) and (3): the app under gunicorn on a free loopback port, loaded by wrk."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench import cpu
from bench.env import BASE_DIR, BENCH_DIR

LUA_DIR = BENCH_DIR / "lua"
PLAIN_CONFIG = BENCH_DIR / "gunicorn_plain.py"


def ensure_wrk() -> str:
    """wrk's path; installs the Debian package when missing and running as root, else exits clearly."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(
            "bench: `wrk` is not installed and this is not root with apt-get. Install it (Debian/Ubuntu: "
            "`sudo apt-get install -y wrk`; macOS: `brew install wrk`) or run only the raw cases: "
            'BENCH_ARGS="--cases raw,classic".'
        )
    print("bench: wrk is missing; installing the Debian package: apt-get install -y wrk", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env).returncode != 0:
        print("bench: retrying after apt-get update", flush=True)
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, check=False)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench: installing wrk failed; install it by hand (apt-get install -y wrk) and run again.")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent():
    """preexec_fn: the child gets SIGTERM if the bench dies, even by SIGKILL (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return preexec


class Gunicorn:
    """A gunicorn master and its workers on a free loopback port. `worker_class` None keeps the config's
    (the gateway's config names its uvicorn workers)."""

    def __init__(self, *, env: dict[str, str], workers: int, config: Path, log_path: Path, worker_class: str | None = "sync"):
        self.env, self.workers, self.config, self.log_path = env, workers, config, log_path
        self.worker_class = worker_class
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        self.port = free_port()
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(self.config),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(self.workers),
            *(["--worker-class", self.worker_class] if self.worker_class else []),
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv,
            cwd=BASE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
            env={**self.env, "PORT": str(self.port)},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"bench: gunicorn exited with status {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:  # noqa: S310 - our own http URL
                    if response.status == 200 and len(self.worker_pids()) >= self.workers:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"bench: gunicorn did not answer /healthz within {timeout:.0f}s; see {self.log_path}")

    def worker_pids(self) -> list[int]:
        return [p.pid for p in cpu.tree(self.process.pid)[1:]] if self.process else []

    def processes(self):
        return cpu.tree(self.process.pid) if self.process else []

    def wait_idle(self, timeout: float = 180.0) -> float:
        """Wait until no worker burns CPU (requests a finished wrk left queued are done); answers the wait."""
        started = time.monotonic()
        quiet = 0
        while time.monotonic() - started < timeout:
            before = {p.pid: sum(p.cpu_times()[:2]) for p in self.processes()[1:]}
            time.sleep(0.1)
            after = {p.pid: sum(p.cpu_times()[:2]) for p in self.processes()[1:]}
            busy = any(after[pid] - before.get(pid, 0.0) > 0.004 for pid in after)
            quiet = 0 if busy else quiet + 1
            if quiet >= 3:
                break
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=25)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def post_json(url: str, body: dict, secret: str) -> tuple[int, dict]:
    """One request outside wrk, to check the setup answers what the load expects."""
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json", "X-Forwarded-Proto": "https"}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - idem
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload)
        except ValueError:
            return exc.code, {"body": payload[:500].decode(errors="replace")}


def run_wrk(*, url: str, script: str, script_args: list[str], connections: int, duration: int, threads: int) -> dict:
    """Run wrk; answers the JSON its Lua `done()` printed (latencies in µs)."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "60s",
        "-s",
        str(LUA_DIR / script),
        url,
        "--",
        *script_args,
    ]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON "))
    raise RuntimeError(f"wrk answered no result (status {completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
