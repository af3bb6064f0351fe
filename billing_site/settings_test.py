"""Test settings: the real PostgreSQL and Redis of `settings`, with a cache namespace of its own
and a fast password hasher."""

from billing_site.settings import *  # noqa: F403
from billing_site.settings import CACHES

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CACHES["default"]["KEY_PREFIX"] = "tollgate-test"
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
