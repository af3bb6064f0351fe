"""gunicorn settings for `make bench BENCH_ARGS="--gunicorn-config plain"`: the project's settings minus the access
log (bind, workers and worker class come from the bench's command line)."""

wsgi_app = "billing_site.wsgi:application"
worker_class = "sync"
timeout = 60
graceful_timeout = 20
preload_app = False
worker_tmp_dir = "/dev/shm"  # noqa: S108 - gunicorn's documented heartbeat location
accesslog = None
errorlog = "-"
loglevel = "warning"
