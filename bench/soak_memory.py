"""Memory of every process the soak exercises, sampled over the run, and the flatness verdict.

Three figures per process: RSS, PSS (shared pages divided among the processes mapping them; Linux only)
and anonymous RSS (`RssAnon` in /proc/<pid>/status: heap and other private memory, without mapped files
and shared memory). Flatness is judged on anonymous RSS: a PostgreSQL backend's RSS and PSS grow as it
touches more of the shared buffers, and a Python process's RSS as it pages in more of its libraries,
which is not a leak; a leak is private memory that keeps growing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psutil

MIB = 1024 * 1024
GROWTH_LIMIT = 0.10  # anonymous RSS may grow by less than 10% between the end of the warm-up and the end …
GROWTH_FLOOR = 2 * MIB  # … or by less than 2 MiB (a 3 MiB Redis moving by 1 MiB is noise, not a trend)
# Processes that are replaced on purpose: a web worker's database connection is closed after
# CONN_MAX_AGE seconds and a new backend serves it. Judged as a group (their mean), not one by one.
RECYCLED_ROLES = {"postgres backend"}
# Shown, not judged: processes that come and go by themselves (autovacuum and parallel-query workers), and
# the load generator, which keeps every request's sample in memory for the report.
UNJUDGED_ROLES = {"postgres worker", "soak"}


def _anon_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure(process: psutil.Process, role: str) -> dict[str, Any] | None:
    try:
        with process.oneshot():
            info = process.memory_full_info() if hasattr(process, "memory_full_info") else process.memory_info()
            return {
                "pid": process.pid,
                "created": process.create_time(),
                "role": role,
                "rss": info.rss,
                "pss": getattr(info, "pss", None),
                "anon": _anon_bytes(process.pid),
            }
    except psutil.Error:
        return None


def snapshot(groups: dict[str, Callable[[], list[psutil.Process]]]) -> list[dict[str, Any]]:
    """Every process of every group, measured now. A gunicorn or Celery group lists its parent first
    (the master), then its workers."""
    out = []
    for group, get in groups.items():
        for index, process in enumerate(get()):
            if (row := measure(process, role_of(group, process, index))) is not None:
                out.append(row)
    return out


def role_of(group: str, process: psutil.Process, index: int) -> str:
    if group == "postgres":
        try:
            words = " ".join(process.cmdline()).split()
        except psutil.Error:
            words = []
        if "[local]" in words or any(w.startswith(("127.", "::1", "(")) for w in words):
            return "postgres backend"
        return "postgres worker" if "worker" in words else "postgres server"
    if group in ("gunicorn", "celery"):
        return f"{group} {'master' if index == 0 else 'worker'}"
    return group


def _grown(start: int | None, end: int | None) -> bool | None:
    if start is None or end is None:
        return None
    return end - start >= max(GROWTH_LIMIT * start, GROWTH_FLOOR)


def verdict(start: list[dict[str, Any]], end: list[dict[str, Any]]) -> dict[str, Any]:
    """Compare two snapshots: each process alive in both is judged alone; recycled roles as a group (mean);
    a process of another role that vanished (a web or Celery worker replaced) is a failure by itself."""
    end_by_id = {(r["pid"], r["created"]): r for r in end}
    start_by_id = {(r["pid"], r["created"]): r for r in start}
    rows, failures = [], []
    for key, before in start_by_id.items():
        after = end_by_id.get(key)
        if before["role"] in RECYCLED_ROLES:
            continue
        judged = before["role"] not in UNJUDGED_ROLES
        if after is None:
            if judged:
                failures.append(f"{before['role']} {before['pid']} is gone (restarted or crashed)")
            continue
        grown = _grown(before["anon"], after["anon"]) if judged else None
        rows.append(
            {"role": before["role"], "pid": before["pid"], "start": before, "end": after, "grown": grown, "judged": judged}
        )
        if grown:
            failures.append(f"{before['role']} {before['pid']}: anonymous RSS {_mib(before['anon'])} -> {_mib(after['anon'])}")
    for role in sorted(RECYCLED_ROLES):
        group_start = [r for r in start if r["role"] == role]
        group_end = [r for r in end if r["role"] == role]
        for after in group_end:  # each one shown; a backend born during the run has no start
            born = start_by_id.get((after["pid"], after["created"])) or {}
            rows.append({"role": role, "pid": after["pid"], "start": born, "end": after, "grown": None, "judged": False})
        if not group_start or not group_end:
            continue
        mean_start = {k: _mean([r[k] for r in group_start]) for k in ("rss", "pss", "anon")}
        mean_end = {k: _mean([r[k] for r in group_end]) for k in ("rss", "pss", "anon")}
        grown = _grown(mean_start["anon"], mean_end["anon"])
        rows.append(
            {
                "role": f"{role} (mean of {len(group_start)} -> {len(group_end)})",
                "pid": None,
                "start": mean_start,
                "end": mean_end,
                "grown": grown,
                "judged": True,
            }
        )
        if grown:
            failures.append(f"{role}s: mean anonymous RSS {_mib(mean_start['anon'])} -> {_mib(mean_end['anon'])}")
    return {"ok": not failures, "failures": failures, "rows": rows}


def _mean(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known)) if known else None


def _mib(value: int | float | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f} MiB"
