"""gunicorn settings for the AI gateway: `gunicorn -c gunicorn_gateway.conf.py` (docs/operations.md).

Uvicorn workers run the gateway's async views (gateway.asgi), so a slow stream holds a coroutine and a
socket, not a worker: hundreds of streams per worker. The web app (gunicorn.conf.py) stays on sync
workers, which serve its short requests fastest.
"""

import os

wsgi_app = "gateway.asgi:application"
bind = f"0.0.0.0:{os.environ.get('GATEWAY_PORT', int(os.environ.get('PORT', '8000')) + 1)}"
workers = int(os.environ.get("GATEWAY_WORKERS", "2"))
worker_class = "gateway.worker.GatewayWorker"  # ends streams before graceful_timeout (gateway/worker.py)
# A stream may last minutes; a worker is only restarted when it stops answering its heartbeat.
timeout = 60
graceful_timeout = int(os.environ.get("GATEWAY_GRACEFUL_SECONDS", "60"))  # lets running streams end
keepalive = 75
control_socket_disable = True
_SHM = "/dev/shm"  # noqa: S108 - gunicorn's documented heartbeat location, not a temp file of ours
worker_tmp_dir = _SHM if os.path.isdir(_SHM) else None
accesslog = None
logger_class = "billing_site.gunicorn_logging.RedactingLogger"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
