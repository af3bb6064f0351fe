"""The project's settings, with the Celery queue the soak names (SOAK_CELERY_QUEUE).

The web workers and beat it starts put their tasks on that queue and its own Celery worker alone
consumes it, so no other worker on the same Redis (a `make run`, a test) can take a settlement meant for
the bench database, and the soak's tasks reach no one else."""

import os

from billing_site.settings import *  # noqa: F403

CELERY_TASK_DEFAULT_QUEUE = os.environ["SOAK_CELERY_QUEUE"]
