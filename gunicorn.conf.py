"""gunicorn settings: `gunicorn -c gunicorn.conf.py` (the app is billing_site.wsgi). Read from the environment."""

import os
import shutil
import tempfile


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours container CPU sets, unlike cpu_count()
    except AttributeError:
        return os.cpu_count() or 1


wsgi_app = "billing_site.wsgi:application"
bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# Sync workers each hold one database connection (CONN_MAX_AGE), so the cap keeps a small box from
# exhausting PostgreSQL's connections; scale out with more machines rather than more workers here.
workers = int(os.environ.get("WEB_CONCURRENCY", min(2 * _cpus() + 1, 12)))
worker_class = "sync"
timeout = 30
graceful_timeout = 20
keepalive = 5
preload_app = False
# The heartbeat file on a tmpfs, so a slow disk (containers) never gets a healthy worker killed.
_SHM = "/dev/shm"  # noqa: S108 - gunicorn's documented heartbeat location, not a temp file of ours
worker_tmp_dir = _SHM if os.path.isdir(_SHM) else None

# gunicorn's runtime control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl), which
# two servers on one machine would fight over; nothing here uses gunicornc.
control_socket_disable = True

# Our own access line (billing_site.observability) carries the request id and tenant; gunicorn's is
# opt-in so lines are not doubled.
accesslog = "-" if os.environ.get("GUNICORN_ACCESS_LOG") else None
logger_class = "billing_site.gunicorn_logging.RedactingLogger"  # reset and invitation links carry secrets
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# client, request line, status, bytes, duration in ms, referrer, user agent
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms "%(f)s" "%(a)s"'


# Metrics: each worker writes its samples to files that /metrics sums (prometheus_client's
# multiprocess mode); `make run` points this at .data/metrics, shared with the Celery worker.
METRICS_DIR = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"tollgate-metrics-{os.getpid()}")
)


def on_starting(server):
    if not os.environ.get("TOLLGATE_KEEP_METRICS"):
        shutil.rmtree(METRICS_DIR, ignore_errors=True)
    os.makedirs(METRICS_DIR, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
