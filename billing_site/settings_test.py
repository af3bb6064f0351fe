"""Test settings: the real PostgreSQL and Redis of `settings`, with a Redis database and cache
namespace of their own (tests flush the cache; a `make run` beside them keeps its broker queue),
and a fast password hasher."""

from billing_site.settings import *  # noqa: F403
from billing_site.settings import CACHES, REDIS_URL

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
TEST_REDIS_URL = REDIS_URL + ("&" if "?" in REDIS_URL else "?") + "db=1"
CACHES["default"]["LOCATION"] = TEST_REDIS_URL
CACHES["default"]["KEY_PREFIX"] = "tollgate-test"
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
GATEWAY_REDIS_URL = TEST_REDIS_URL  # its keys carry the cache prefix, so each test starts with none
# A plain call waits for its answer as long as each test's upstream says (tests of the longer production wait
# set this themselves: tests/gateway/test_resilience.py).
GATEWAY_PLAIN_TIMEOUT_SECONDS = 0.0
