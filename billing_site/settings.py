"""Settings, read from the environment (12-factor). See the README for every variable.

With neither DATABASE_URL nor REDIS_URL set, the project runs on embedded PostgreSQL and Redis
under `.data/` (development and tests); with them set, it is production-like and refuses to
start without SECRET_KEY.
"""

import hmac
import secrets
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import environ

from billing_site import embedded

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

TOLLGATE_ENV = env.str("TOLLGATE_ENV", default="production" if env.str("DATABASE_URL", "") else "development")
DEVELOPMENT = TOLLGATE_ENV != "production"
DEBUG = env.bool("DEBUG", default=False)


def _development_secret_key() -> str:
    key_file = embedded.DATA_DIR / "secret_key"
    if not key_file.exists():
        embedded.DATA_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


if DEVELOPMENT:
    SECRET_KEY = env.str("SECRET_KEY", default="") or _development_secret_key()
else:
    SECRET_KEY = env.str("SECRET_KEY")  # ImproperlyConfigured when missing: production must set it

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "billing_site.apps.BillingSiteConfig",
    "accounts",
    "payments",
    "metering",
    "dashboard",
    "gateway",
    "statements",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "billing_site.observability.RequestIdMiddleware",
    "billing_site.cache.CacheVersionsMiddleware",
    "billing_site.api.limits.RequestLimitsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "billing_site.urls"
WSGI_APPLICATION = "billing_site.wsgi.application"
AUTH_USER_MODEL = "accounts.User"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: explicit transactions in services (no ATOMIC_REQUESTS), persistent connections.
if env.str("DATABASE_URL", ""):
    DATABASES = {"default": env.db_url("DATABASE_URL", engine="django.db.backends.postgresql")}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", **embedded.ensure_postgres()}}
    # Another database on the embedded server: the test suite points a real Celery worker at its test database.
    DATABASES["default"]["NAME"] = env.str("DATABASE_NAME", default=DATABASES["default"]["NAME"])
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=600)
# Off by default: a check costs a round trip on every request. After a database restart, the first
# request on each stale connection fails once (clients retry safely: every write is idempotent).
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=False)
DATABASES["default"]["ATOMIC_REQUESTS"] = False
# The hot path's debit statement is prepared on the server (billing_site/db.py); off for a
# transaction-mode pooler that cannot keep prepared statements (pgbouncer before 1.21).
DATABASE_PREPARED_STATEMENTS = env.bool("DATABASE_PREPARED_STATEMENTS", default=True)
if DATABASE_PREPARED_STATEMENTS:
    # Django turns psycopg's preparation off (None), which also ignores an explicit request. This
    # threshold is never reached: only the cursor that asks for it (prepared_cursor) prepares.
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 2**31 - 1
DATABASES["default"].setdefault("TEST", {})["NAME"] = env.str("TEST_DATABASE_NAME", default="test_tollgate")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, throttling and the Celery broker.
REDIS_URL = env.str("REDIS_URL", default="") or embedded.ensure_redis()
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="tollgate"),
        "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient", "SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
    }
}

# --- The AI gateway's shared state in Redis (gateway/redis.py, breaker.py, limits.py; docs/gateway-resilience.md).
GATEWAY_REDIS_URL = env.str("GATEWAY_REDIS_URL", default="") or REDIS_URL
GATEWAY_REDIS_TIMEOUT_SECONDS = env.float("GATEWAY_REDIS_TIMEOUT_SECONDS", default=1.0)
# An upstream's breaker opens after this many consecutive failures, for this long; then one probe call decides.
GATEWAY_BREAKER_FAILURES = env.int("GATEWAY_BREAKER_FAILURES", default=5)
GATEWAY_BREAKER_COOLDOWN_SECONDS = env.float("GATEWAY_BREAKER_COOLDOWN_SECONDS", default=30.0)

# The per-process cache of API keys and prices (billing_site/cache.py) is exact through its Redis
# version tokens; this is only the backstop on an entry's age, for a change Redis could not announce.
CACHE_LOCAL_SECONDS = env.int("CACHE_LOCAL_SECONDS", default=30)


def _celery_url(url: str) -> str:
    # kombu spells a unix-socket Redis as redis+socket://
    return "redis+socket://" + url.removeprefix("unix://") if url.startswith("unix://") else url


CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or _celery_url(REDIS_URL)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # the worker logs through LOGGING below (JSON in production)
CELERY_BEAT_SCHEDULE_FILENAME = str(embedded.DATA_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "holds-expire": {"task": "metering.tasks.holds_expire", "schedule": 60.0},
    # Starts each subscription's new period (its fee, once) and collects unpaid fees (docs/pricing.md, Plans).
    "subscriptions-renew": {"task": "metering.tasks.subscriptions_renew", "schedule": 60.0},
    "payments-sweep": {"task": "payments.tasks.payments_sweep", "schedule": 120.0},
    "reconcile": {"task": "payments.tasks.reconcile", "schedule": 3600.0},
    "usage-retention": {"task": "metering.tasks.usage_retention", "schedule": 86400.0},
    "volume-true-ups": {"task": "metering.tasks.volume_true_ups", "schedule": 3600.0},
    # Writes off what expired credit grants still hold, once each (docs/credits.md).
    "grants-expire": {"task": "payments.tasks.grants_expire", "schedule": 60.0},
    # Issues each organization's statement of the month that closed (docs/statements.md), once.
    "statements-issue": {"task": "statements.tasks.statements_issue", "schedule": 600.0},
}
# A month's statement waits this long after the month ends: longer than any transaction that may
# still commit a ledger entry dated in that month.
STATEMENT_ISSUE_DELAY_SECONDS = env.int("STATEMENT_ISSUE_DELAY_SECONDS", default=3600)
# The seller on receipts and statements (docs/statements.md).
SELLER_NAME = env.str("SELLER_NAME", default="Tollgate")
SELLER_ADDRESS = env.str("SELLER_ADDRESS", default="")
SELLER_TAX_ID = env.str("SELLER_TAX_ID", default="")
SELLER_EMAIL = env.str("SELLER_EMAIL", default="")
SELLER_SET = frozenset(name for name in ("SELLER_NAME", "SELLER_ADDRESS", "SELLER_TAX_ID", "SELLER_EMAIL") if name in env.ENVIRON)

# --- Auth
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/dashboard/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "accounts.authentication.JwtAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["billing_site.api.limits.BoundedJsonParser"],
    "DEFAULT_PAGINATION_CLASS": "billing_site.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "billing_site.api.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    "COERCE_DECIMAL_TO_STRING": True,
    "DEFAULT_THROTTLE_CLASSES": ["billing_site.api.throttling.PrincipalRateThrottle"],
}

# Rate limits per minute (Redis-backed; see billing_site/api/throttling.py). Organizations may carry overrides.
THROTTLE_ENABLED = env.bool("THROTTLE_ENABLED", default=True)
THROTTLE_KEY_PER_MINUTE = env.int("THROTTLE_KEY_PER_MINUTE", default=60_000)
THROTTLE_USER_PER_MINUTE = env.int("THROTTLE_USER_PER_MINUTE", default=6_000)
THROTTLE_BATCH_EVENTS_PER_MINUTE = env.int("THROTTLE_BATCH_EVENTS_PER_MINUTE", default=1_200_000)
THROTTLE_ANONYMOUS_PER_MINUTE = env.int("THROTTLE_ANONYMOUS_PER_MINUTE", default=120)
THROTTLE_DOCUMENTS_PER_MINUTE = env.int("THROTTLE_DOCUMENTS_PER_MINUTE", default=120)
# Every limit keys on the client's address (billing_site.throttle.client_ip): with N reverse proxies in
# front, the N-th address from the right of X-Forwarded-For; with 0, the connection's own address.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
# Sign-in lockout (the API token, the dashboard and the admin): this many failures for one account from
# one address lock that pair out for this long after the last one.
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
LOGIN_LOCKOUT_SECONDS = env.int("LOGIN_LOCKOUT_SECONDS", default=15 * 60)

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=7)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": False,
    "SIGNING_KEY": env.str("JWT_SIGNING_KEY", default="") or SECRET_KEY,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Tollgate API",
    "DESCRIPTION": (
        "Prepaid, exactly-metered billing for AI APIs. Authenticate with `Authorization: Bearer <JWT access token>` "
        "(from `auth/token/`) or with an API key (`Authorization: Bearer tg_live_…` or `X-API-Key`). Amounts are decimal "
        'strings, never floats. Every error is `{"error": {"code", "message", "details"}}` with a stable `code`.'
    ),
    "TAGS": [
        {"name": "auth", "description": "Sign up, sign in, refresh and sign out (JWT)."},
        {"name": "account", "description": "Who you are and your organizations."},
        {"name": "keys", "description": "Your organization's API keys."},
        {"name": "services", "description": "What you can use, and its price for you."},
        {"name": "usage", "description": "Record usage (each event priced and paid at once) and read it back."},
        {"name": "holds", "description": "Reserve money before a long or streamed call, then capture or release it."},
        {"name": "balance", "description": "Your balance and the ledger that explains it."},
        {"name": "payments", "description": "Recharges, redemption codes, and the providers' notifications."},
        {"name": "budgets", "description": "Spend limits per day, week or month, for the organization or one API key."},
        {"name": "staff", "description": "For Tollgate staff: the catalogue, prices and balance adjustments."},
    ],
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Two choice sets share the field name `mode`: an API key's and a budget's.
    "ENUM_NAME_OVERRIDES": {
        "ApiKeyModeEnum": "accounts.models.ApiKeyMode",
        "BudgetModeEnum": "payments.credit_models.BudgetMode",
    },
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "billing_site.api.schema.postprocess"],
}

# --- Money
CURRENCY = env.str("CURRENCY", default="USD")
API_KEY_LAST_USED_RESOLUTION = timedelta(seconds=env.int("API_KEY_LAST_USED_SECONDS", default=60))
HOLD_DEFAULT_TTL = timedelta(seconds=env.int("HOLD_DEFAULT_TTL_SECONDS", default=600))
HOLD_MAX_TTL = timedelta(seconds=env.int("HOLD_MAX_TTL_SECONDS", default=86400))
# A credit grant that expires within this is flagged `expires_soon` (API, dashboard notice).
GRANT_EXPIRES_SOON = timedelta(days=env.int("GRANT_EXPIRES_SOON_DAYS", default=7))
USAGE_BATCH_MAX_EVENTS = 1000
# Largest request body accepted (413 above it); room for a full batch of text events.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("REQUEST_BODY_MAX_BYTES", default=10 * 1024 * 1024)
# Usage records older than this many days are archived (gzip'd JSON Lines) and dropped; 0 keeps them forever.
USAGE_RETENTION_DAYS = env.int("USAGE_RETENTION_DAYS", default=0)
USAGE_ARCHIVE_DIR = env.str("USAGE_ARCHIVE_DIR", default=str(embedded.DATA_DIR / "archive"))
STARTING_DEMO_BALANCE = Decimal("25.00")

# --- Payments
PORT = env.int("PORT", default=8000)
SITE_URL = env.str("SITE_URL", default=f"http://127.0.0.1:{PORT}")
PAYMENT_PROVIDERS = env.list("PAYMENT_PROVIDERS", default=["sandbox", "stripe"] if DEVELOPMENT else ["stripe"])
# The sandbox lets a payer confirm their own payment (credit without money). In production it stays
# off even when PAYMENT_PROVIDERS names it, unless this second, deliberate switch is on as well.
SANDBOX_IN_PRODUCTION = env.bool("SANDBOX_IN_PRODUCTION", default=False)
RECHARGE_MIN = Decimal(env.str("RECHARGE_MIN", default="1.00"))
RECHARGE_MAX = Decimal(env.str("RECHARGE_MAX", default="10000.00"))
PAYMENT_PENDING_TTL = timedelta(hours=env.int("PAYMENT_PENDING_TTL_HOURS", default=24))
# Derived from SECRET_KEY unless set, so a fresh checkout works and no secret sits in the repository.
SANDBOX_WEBHOOK_SECRET = (
    env.str("SANDBOX_WEBHOOK_SECRET", default="") or hmac.new(SECRET_KEY.encode(), b"sandbox-webhook", "sha256").hexdigest()
)
SANDBOX_WEBHOOK_URL = env.str("SANDBOX_WEBHOOK_URL", default=f"{SITE_URL}/api/v1/payments/webhooks/sandbox/")
# Alert webhooks go only to public addresses (checked when saved and again when sent). True lets
# them reach loopback and private networks too: for a receiver on your own machine or network.
ALERT_WEBHOOK_ALLOW_PRIVATE = env.bool("ALERT_WEBHOOK_ALLOW_PRIVATE", default=False)
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
# Empty: Stripe's own API. Set only to point the SDK at a stand-in (the tests' fake Stripe server).
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")

# --- The AI gateway (gateway/crypto.py, docs/operations.md "Upstream API keys")
# Fernet keys that encrypt upstream API keys at rest: the first encrypts, all decrypt (rotation).
# Required in production; development derives one from SECRET_KEY when this is unset.
GATEWAY_ENCRYPTION_KEYS = env.list("GATEWAY_ENCRYPTION_KEYS", default=[])
# Where the demo's sandbox upstream answers (`seed_demo` points the demo routes at it).
GATEWAY_PORT = env.int("GATEWAY_PORT", default=env.int("PORT", default=8000) + 1)
GATEWAY_SANDBOX_URL = env.str("GATEWAY_SANDBOX_URL", default=f"http://127.0.0.1:{GATEWAY_PORT}/sandbox/v1")

# --- Metrics: /metrics needs a token or an allow-listed network; with neither it is open in
# development and closed (403, and a `check --deploy` warning) in production.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = env.list("METRICS_ALLOWED_NETWORKS", default=[])

# --- i18n, static
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# EMAIL_URL (e.g. smtp+tls://user:password@smtp.example.com:587) configures SMTP; without it, mail goes to the console.
if env.str("EMAIL_URL", ""):
    vars().update(env.email_url("EMAIL_URL"))
else:
    EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="billing@tollgate.localhost")

# --- Production hardening (behind a TLS-terminating proxy)
if not DEVELOPMENT:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

LOG_FORMAT = env.str("LOG_FORMAT", default="plain" if DEVELOPMENT else "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "billing_site.observability.ContextFilter"},
        "redact": {"()": "billing_site.observability.RedactSecretsFilter"},
    },
    "formatters": {
        "json": {"()": "billing_site.observability.JsonFormatter"},
        "plain": {"()": "billing_site.observability.PlainFormatter", "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["context"], "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "pgserver": {"level": "WARNING"},
        # One line per upstream request is the gateway's metrics' job, not the log's.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # The access line is ours (with request id and tenant); Django's own would repeat it.
        "django.server": {"level": "WARNING", "filters": ["redact"]},
        # Django's warnings for 4xx/5xx answers and refused CSRF checks name the path.
        "django.request": {"filters": ["redact"]},
        "django.security.csrf": {"filters": ["redact"]},
        "tollgate.access": {"level": env.str("ACCESS_LOG_LEVEL", default="INFO")},
    },
}
# The access line (billing_site.observability): every error and slow request, and this share of the others.
ACCESS_LOG_SAMPLE_RATE = env.float("ACCESS_LOG_SAMPLE_RATE", default=0.01)
ACCESS_LOG_SLOW_MS = env.float("ACCESS_LOG_SLOW_MS", default=200)

# --- The AI gateway (docs/gateway.md): an ASGI process of its own (gateway/asgi.py).
GATEWAY_MAX_BODY_BYTES = env.int("GATEWAY_MAX_BODY_BYTES", default=20 * 1024 * 1024)
# A call's hold lives this long at most: a gateway process that dies mid-call leaves it to the expiry task.
GATEWAY_HOLD_SECONDS = max(env.int("GATEWAY_HOLD_SECONDS", default=3600), 300)  # a stream is cut 120 s before
# How long a stream whose client left is still read for its usage report (route policy `drain`).
GATEWAY_DRAIN_SECONDS = env.float("GATEWAY_DRAIN_SECONDS", default=60.0)
# A plain (non-streamed) call's answer comes whole, after the whole generation: its wait, at least the upstream's
# first-byte timeout.
GATEWAY_PLAIN_TIMEOUT_SECONDS = env.float("GATEWAY_PLAIN_TIMEOUT_SECONDS", default=600.0)
GATEWAY_UPSTREAM_RETRIES = env.int("GATEWAY_UPSTREAM_RETRIES", default=1)  # per upstream, before its first byte
GATEWAY_RETRY_BACKOFF_SECONDS = env.float("GATEWAY_RETRY_BACKOFF_SECONDS", default=0.1)
GATEWAY_KEEPALIVE_CONNECTIONS = env.int("GATEWAY_KEEPALIVE_CONNECTIONS", default=100)
# Concurrency slots (per key's streams, per upstream) are leases renewed while a call runs, so a killed
# process frees its slots after this long.
GATEWAY_LEASE_SECONDS = env.float("GATEWAY_LEASE_SECONDS", default=300.0)
# The simulated upstream at /sandbox/v1/ on the gateway, for the demo. Off in production by default.
GATEWAY_SANDBOX_ENABLED = env.bool("GATEWAY_SANDBOX_ENABLED", default=DEVELOPMENT)
