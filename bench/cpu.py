"""Who used the CPU during a measured window, in cores: the database server, the app (gunicorn),
the load generator, and everything else on the machine (other engineers' tests, …)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import psutil


def _busy_seconds() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far; steal is time the hypervisor gave away."""
    t = psutil.cpu_times()
    steal = getattr(t, "steal", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0) + getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    return sum(t) - idle - steal, steal


def machine_busy(seconds: float = 1.0) -> float:
    """Cores busy on the whole machine over the next `seconds`."""
    before = _busy_seconds()[0]
    time.sleep(seconds)
    return (_busy_seconds()[0] - before) / seconds


def wait_quiet(*, limit_cores: float, timeout: float) -> tuple[float, float]:
    """Wait (up to `timeout` s) until the machine is busy with less than `limit_cores`; answers (waited, busy)."""
    started = time.monotonic()
    busy = machine_busy()
    while busy >= limit_cores and time.monotonic() - started < timeout:
        busy = machine_busy()
    return time.monotonic() - started, busy


def _process_times(processes: list[psutil.Process]) -> dict[tuple[int, float], float]:
    out = {}
    for process in processes:
        try:
            with process.oneshot():
                times = process.cpu_times()
                out[(process.pid, process.create_time())] = times.user + times.system
        except psutil.Error:
            continue
    return out


def tree(pid: int | None) -> list[psutil.Process]:
    if not pid:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def postgres(postmaster_pid: int | None, database: str) -> list[psutil.Process]:
    """The server's processes that work for `database`: the postmaster, the shared background processes
    (WAL writer, checkpointer, …) and the backends and autovacuum workers of that database — not the
    backends of other databases on the same server (other engineers' test databases)."""
    out = []
    for process in tree(postmaster_pid):
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue
        words = title.split()
        is_backend = "[local]" in words or any(w.startswith(("127.", "::1", "(")) for w in words) or "worker" in words
        if not is_backend or database in words:
            out.append(process)
    return out


def by_pids(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return out


class Window:
    """start() at the window's start, stop() at its end; `groups` name a function answering the
    processes of each group (asked at both ends: processes born inside count from zero)."""

    def __init__(self, groups: dict[str, Callable[[], list[psutil.Process]]], *, children_rusage: str | None = None):
        self.groups = groups
        self.children_rusage = children_rusage  # a group measured by getrusage(RUSAGE_CHILDREN) (wrk)
        self.result: dict[str, float] = {}

    def start(self) -> Window:
        self._wall = time.monotonic()
        self._busy, self._steal = _busy_seconds()
        self._before = {name: _process_times(get()) for name, get in self.groups.items()}
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._children = usage.ru_utime + usage.ru_stime
        return self

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._wall
        busy_now, steal_now = _busy_seconds()
        busy, steal = busy_now - self._busy, steal_now - self._steal
        cores: dict[str, float] = {}
        for name, get in self.groups.items():
            after = _process_times(get())
            before = self._before[name]
            cores[name] = sum(t - before.get(key, 0.0) for key, t in after.items()) / wall
        if self.children_rusage:
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            cores[self.children_rusage] = (usage.ru_utime + usage.ru_stime - self._children) / wall
        cores["total"] = busy / wall
        cores["other"] = max(0.0, cores["total"] - sum(v for k, v in cores.items() if k != "total"))
        cores["steal"] = steal / wall
        self.result = {k: round(v, 2) for k, v in cores.items()}
        return self.result
