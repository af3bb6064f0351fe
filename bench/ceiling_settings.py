"""The project's settings plus the bench's ceiling view (bench/ceiling.py); gunicorn under `make bench` runs these."""

from billing_site.settings import *  # noqa: F403 - the same deployment, one URL more

ROOT_URLCONF = "bench.ceiling"
