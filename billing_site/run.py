"""`make run`: the whole product on one machine, in the foreground, with no questions asked.

Ensures the embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set), migrates,
seeds the demo, collects static files, then supervises three children: gunicorn, a Celery worker
and Celery beat, their output prefixed with their names. SIGINT / SIGTERM / SIGHUP stop them all
(a second signal kills them), and then the embedded servers this run started; if a child dies
on its own, the others are stopped and the exit status is non-zero.

A crash must not block the next run: the children die with this process (Linux), a state file
under the data folder lets the next run kill whatever survived, and a postmaster.pid left by a
killed PostgreSQL is removed when its pid now belongs to another process.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from billing_site import embedded

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_FILE = embedded.DATA_DIR / "run.json"
STOP_TIMEOUT = 30.0  # seconds a child gets to finish (a Celery warm shutdown ends running tasks)
READY_TIMEOUT = 90.0
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# One stop request often arrives twice at once (`timeout` and `kill -- -pgid` signal the process and
# its group); only a signal after this window means "kill now".
DUPLICATE_SIGNAL_WINDOW = 1.0


class Stop(Exception):
    """A stop signal arrived while setting up."""


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    buffer: bytes = b""
    create_time: float = 0.0

    @property
    def started(self) -> subprocess.Popen[bytes]:
        """The process of a child that `Supervisor.start` started."""
        assert self.process is not None, f"{self.name} was never started"
        return self.process


@dataclass
class Supervisor:
    signals: list[int] = field(default_factory=list)
    first_signal_at: float = 0.0
    children: list[Child] = field(default_factory=list)
    owned_servers: set[str] = field(default_factory=set)
    servers_ensured: bool = False
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)

    def on_signal(self, signum: int, frame) -> None:
        # No output here: a print could re-enter a write the main loop is in the middle of.
        now = time.monotonic()
        if not self.signals:
            self.first_signal_at = now
        elif now - self.first_signal_at > DUPLICATE_SIGNAL_WINDOW:
            self.kill_children(signal.SIGKILL)
        self.signals.append(signum)

    def check_signals(self) -> None:
        if self.signals:
            raise Stop

    # --- setup -------------------------------------------------------------------------------
    def manage(self, *args: str, capture: bool = False) -> str:
        """Run a manage.py command to completion (or until a stop signal); answer its stdout."""
        process = subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=BASE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            text=True,
        )
        while True:
            try:
                out, _ = process.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if self.signals:
                    process.terminate()
                    process.wait()
                    raise Stop from None
        if process.returncode != 0:
            sys.stdout.write(out or "")
            raise SystemExit(f"run: manage.py {' '.join(args)} failed with exit status {process.returncode}")
        return out or ""

    # --- children ----------------------------------------------------------------------------
    def start(self, child: Child) -> None:
        import psutil

        # Own session: a Ctrl-C reaches only this supervisor, which stops each child exactly once
        # (a Celery worker hit twice would skip its warm shutdown).
        process = child.process = subprocess.Popen(
            child.argv,
            cwd=BASE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stdout is not None  # stdout=PIPE
        child.create_time = psutil.Process(process.pid).create_time()
        os.set_blocking(process.stdout.fileno(), False)
        self.selector.register(process.stdout, selectors.EVENT_READ, child)
        self.children.append(child)

    def pump(self, timeout: float) -> None:
        """Copy the children's output, line by line with their names, for up to `timeout` seconds."""
        if not self.selector.get_map():
            time.sleep(timeout)
            return
        for key, _ in self.selector.select(timeout):
            child: Child = key.data
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self.selector.unregister(key.fileobj)
                self.emit(child, final=True)
                continue
            child.buffer += chunk
            self.emit(child)

    def emit(self, child: Child, final: bool = False) -> None:
        *lines, child.buffer = child.buffer.split(b"\n")
        if final and child.buffer:
            lines, child.buffer = [*lines, child.buffer], b""
        width = max(len(c.name) for c in self.children)
        out = sys.stdout.buffer
        for line in lines:
            out.write(f"{child.name:<{width}} | ".encode() + line + b"\n")
        out.flush()

    def running(self) -> list[Child]:
        return [c for c in self.children if c.process is not None and c.process.poll() is None]

    def kill_children(self, sig: int) -> None:
        for child in self.running():
            # SIGTERM to the leader (gunicorn's master and Celery stop their own processes);
            # SIGKILL to the whole group, which leaves nothing behind.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if sig == signal.SIGKILL:
                    os.killpg(child.started.pid, sig)
                else:
                    child.started.send_signal(sig)

    def stop_children(self) -> None:
        if not self.running():
            return
        say("stopping " + ", ".join(c.name for c in self.running()))
        self.kill_children(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.running() and time.monotonic() < deadline:
            self.pump(0.2)
        if self.running():
            say("killing " + ", ".join(c.name for c in self.running()) + f" (still running after {STOP_TIMEOUT:.0f}s)")
            self.kill_children(signal.SIGKILL)
        for child in self.children:
            if child.process is not None:
                child.process.wait()
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.process.pid, signal.SIGKILL)  # stragglers of a group whose leader left
        drain_by = time.monotonic() + 2
        while self.selector.get_map() and time.monotonic() < drain_by:
            self.pump(0.2)
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)

    # --- embedded servers --------------------------------------------------------------------
    def ensure_servers(self) -> None:
        """Start (or reuse) the embedded servers that DATABASE_URL / REDIS_URL do not replace. This
        run owns, and stops at exit, the ones it starts (and, from `claim`, those a crashed run left)."""
        self.servers_ensured = True
        if not os.environ.get("DATABASE_URL"):
            state = _postgres_state()
            if state == "stale":
                _remove_stale_postgres_files()
            embedded.ensure_postgres()
            if state != "running":
                self.owned_servers.add("postgres")
        if not os.environ.get("REDIS_URL"):
            answered = embedded._redis_answers()
            embedded.ensure_redis()
            if not answered:
                self.owned_servers.add("redis")

    def stop_servers(self) -> None:
        if self.owned_servers == {"postgres", "redis"}:
            say("stopping the embedded PostgreSQL and Redis")
            embedded.stop_all()
        elif "postgres" in self.owned_servers:
            say("stopping the embedded PostgreSQL")
            _stop_postgres()
        elif "redis" in self.owned_servers:
            say("stopping the embedded Redis")
            _stop_redis()
        elif self.servers_ensured and not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
            say("leaving the embedded servers running: they were already up before this run")

    # --- state file --------------------------------------------------------------------------
    def claim(self) -> None:
        """Refuse to start beside a live run; clean up after a dead one, taking over the servers
        it owned."""
        import psutil

        try:
            previous = json.loads(STATE_FILE.read_text())
        except (FileNotFoundError, ValueError):
            return
        if _alive(previous.get("pid"), previous.get("create_time")):
            raise SystemExit(f"run: another `make run` (pid {previous['pid']}) uses {embedded.DATA_DIR}; stop it first.")
        for child in previous.get("children", []):
            if _alive(child["pid"], child["create_time"]):
                say(f"stopping {child['name']} (pid {child['pid']}) left over from a crashed run")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child["pid"], signal.SIGTERM)
                with contextlib.suppress(psutil.Error):
                    psutil.Process(child["pid"]).wait(10)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child["pid"], signal.SIGKILL)
        self.owned_servers |= set(previous.get("owned_servers", []))

    def save(self) -> None:
        import psutil

        state = {
            "pid": os.getpid(),
            "create_time": psutil.Process().create_time(),
            "owned_servers": sorted(self.owned_servers),
            "children": [
                {"name": c.name, "pid": c.process.pid, "create_time": c.create_time} for c in self.children if c.process
            ],
        }
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        tmp = STATE_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(STATE_FILE)


def say(message: str) -> None:
    print(f"run | {message}", flush=True)


def _alive(pid: int | None, create_time: float | None) -> bool:
    import psutil

    if not pid:
        return False
    try:
        return abs(psutil.Process(pid).create_time() - (create_time or 0)) < 0.01
    except psutil.Error:
        return False


def _die_with_parent():
    """A preexec_fn that has the child receive SIGTERM when this process dies, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG); elsewhere the state file covers it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: nothing may be imported between fork and exec
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, sigterm)

    return preexec


def _postgres_pidfile() -> list[str]:
    try:
        return (embedded.PG_DIR / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return []


def _postgres_state() -> str:
    """'running', 'absent', or 'stale': a postmaster.pid whose pid is dead or, after a reboot or in a
    new container, now belongs to another process (PostgreSQL would then refuse to start)."""
    import psutil

    lines = _postgres_pidfile()
    if not lines:
        return "absent"
    try:
        return "running" if psutil.Process(int(lines[0])).name() == "postgres" else "stale"
    except (ValueError, psutil.NoSuchProcess):
        return "stale"
    except psutil.AccessDenied:
        return "running"


def _remove_stale_postgres_files() -> None:
    lines = _postgres_pidfile()
    say("removing a stale postmaster.pid left by a PostgreSQL that did not stop")
    if len(lines) >= 5 and lines[3].strip() and lines[4].strip():
        lock = Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}.lock"
        lock.unlink(missing_ok=True)
        lock.with_suffix("").unlink(missing_ok=True)  # the socket itself
    (embedded.PG_DIR / "postmaster.pid").unlink(missing_ok=True)


def _stop_postgres() -> None:
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import time, unseen by mypy

    if (embedded.PG_DIR / "postmaster.pid").exists():
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=embedded.PG_DIR, user="pgserver" if os.geteuid() == 0 else None)


def _stop_redis() -> None:
    if embedded._redis_answers():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(embedded.REDIS_SOCKET))
            conn.sendall(b"SHUTDOWN NOSAVE\r\n")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - the same address gunicorn binds
        except OSError:
            return False
    return True


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _banner(port: int, seed_output: str) -> str:
    base = f"http://127.0.0.1:{port}"
    gateway = f"http://127.0.0.1:{_gateway_port(port)}/v1"
    external = [name for name in ("DATABASE_URL", "REDIS_URL") if os.environ.get(name)]
    data = f"external ({', '.join(external)})" if external else f"embedded PostgreSQL and Redis under {embedded.DATA_DIR}"
    rule = "=" * 72
    return "\n".join(
        [
            rule,
            "Tollgate is running. Ctrl-C stops the web app, the worker, beat and the servers this run started.",
            f"  Dashboard  {base}/login/   (sign up at {base}/signup/)",
            f"  API        {base}/api/v1/",
            f"  Admin      {base}/admin/",
            f"  API docs   {base}/api/docs/",
            f"  Gateway    {gateway}   (OpenAI-compatible: base_url for any OpenAI SDK)",
            f"  Health     {base}/healthz   {base}/readyz   {base}/metrics",
            f"  Data       {data}",
            "",
            seed_output.rstrip(),
            rule,
        ]
    )


def _gateway_port(port: int) -> int:
    return int(os.environ.get("GATEWAY_PORT", port + 1))


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    supervisor = Supervisor()
    for sig in SIGNALS:
        # Installed explicitly: a shell starts background jobs with SIGINT ignored.
        signal.signal(sig, supervisor.on_signal)
    os.chdir(BASE_DIR)
    exit_code, claimed, announced, seed_output = 0, False, False, ""
    try:
        supervisor.claim()
        claimed = True
        if not _port_free(port):
            raise SystemExit(f"run: port {port} is in use; stop what uses it or set PORT to another port.")
        if not _port_free(_gateway_port(port)):
            raise SystemExit(f"run: port {_gateway_port(port)} (the gateway) is in use; stop what uses it or set GATEWAY_PORT.")
        supervisor.ensure_servers()
        supervisor.save()
        supervisor.check_signals()
        say("migrating")
        supervisor.manage("migrate", "--noinput")
        say("seeding the demo")
        seed_output = supervisor.manage("seed_demo", capture=True)
        say("collecting static files")
        supervisor.manage("collectstatic", "--noinput", "--verbosity", "0")
        supervisor.check_signals()

        # Web workers and the Celery worker write their metrics into one folder that /metrics sums.
        metrics_dir = embedded.DATA_DIR / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ["TOLLGATE_KEEP_METRICS"] = "1"  # cleared here, before any child writes

        python = sys.executable
        for child in (
            Child("web", [python, "-m", "gunicorn", "-c", "gunicorn.conf.py"]),
            Child("gateway", [python, "-m", "gunicorn", "-c", "gunicorn_gateway.conf.py"]),
            Child("worker", [python, "-m", "celery", "-A", "billing_site", "worker", "--loglevel=INFO", "--concurrency=2"]),
            Child("beat", [python, "-m", "celery", "-A", "billing_site", "beat", "--loglevel=INFO"]),
        ):
            supervisor.start(child)
        supervisor.save()

        ready_by = time.monotonic() + READY_TIMEOUT
        while not supervisor.signals:
            supervisor.pump(0.5)
            dead = [c for c in supervisor.children if c.started.poll() is not None]
            if dead:
                for child in dead:
                    say(f"{child.name} exited with status {child.started.returncode}; stopping the others")
                exit_code = 1
                break
            if not announced and _ready(port) and _ready(_gateway_port(port)):
                print(_banner(port, seed_output), flush=True)
                announced = True
            elif not announced and time.monotonic() > ready_by:
                say(f"the web app does not answer on port {port} after {READY_TIMEOUT:.0f}s; stopping")
                exit_code = 1
                break
    except Stop:
        pass
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr, flush=True)
        exit_code = exc.code if isinstance(exc.code, int) else 1
    finally:
        if supervisor.signals:
            say(f"{signal.Signals(supervisor.signals[0]).name} received: stopping (signal again to kill)")
        supervisor.stop_children()
        if claimed:
            supervisor.stop_servers()
            STATE_FILE.unlink(missing_ok=True)
        if seed_output and not announced:
            sys.stdout.write(seed_output)  # the demo logins and any new key secrets are not lost
    say("stopped")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
