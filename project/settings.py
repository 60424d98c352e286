"""Settings, all from the environment, so one codebase runs as one process or many.

REDIS_URL              the channel layer (redis://, rediss://user:pass@host:port/db, or Sentinels:
                       rediss+sentinel://user:pass@host:26379,host:26379/primary/db); unset: in-memory
BUS_ENCRYPTION_KEYS    comma-separated keys that encrypt messages on Redis (needs `cryptography`)
BUS_IDENTITY           the service this process speaks for (orders, web, operators); signs what it sends
BUS_SIGNING_KEY        that service's Ed25519 private key, a PEM file (`manage.py bus keys new`)
BUS_TRUSTED_KEYS       a directory of <service>.pub files: workers then refuse unsigned messages
BUS_SIGNATURE_MAX_AGE  seconds a signed command or event stays acceptable (default 604800)
DATABASE_URL           the default database; INVENTORY_DATABASE_URL etc. per domain (SQLite files by default)
DJANGO_SECRET_KEY      required with REDIS_URL; the one-process demo makes its own in the data folder
DJANGO_DEBUG=1         Django's debug pages, for a developer's own machine only (off by default)
DJANGO_ALLOWED_HOSTS   host names this site answers to (localhost, 127.0.0.1, [::1])
DJANGO_HTTPS=1         served over HTTPS (behind the balancer): Secure cookies, HSTS, redirects to https
DJANGO_BEHIND_PROXY=1  trust the balancer's X-Forwarded-Proto and X-Forwarded-For
DJANGO_DATA_DIR        SQLite files and the demo's secret key (var/)
DATABASE_POOL_SIZE     PostgreSQL connections per process and database (default 8)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from bus.conf import channel_layers
from bus.sentinel import cache_settings
from project.secret_key import demo_key

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DJANGO_DATA_DIR", BASE_DIR / "var"))
# SQLite creates files, not folders: a fresh clone has no var/ yet.
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
# Without REDIS_URL everything runs in one process (the demo), which may make a key of its own;
# every other process refuses to start without one (project.secret_key).
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or (
    "" if os.environ.get("REDIS_URL") else demo_key(DATA_DIR)
)
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

# Behind HTTPS (the compose file's balancer): cookies only over TLS, HSTS, plain HTTP redirected.
HTTPS = os.environ.get("DJANGO_HTTPS") == "1"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = 31_536_000 if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_PRELOAD = HTTPS
# Probes reach the web processes directly, over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
# Only a balancer that sets these headers itself (deploy/nginx.conf) may be trusted with them.
BEHIND_PROXY = os.environ.get("DJANGO_BEHIND_PROXY") == "1"
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_PROXY else None
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"

INSTALLED_APPS = [
    "daphne",
    "project",  # its checks: no process starts with an unusable secret key
    "bus",  # before channels: its runworker replaces Channels' own
    "channels",
    # The operators' pages at /admin/ (bus/admin.py and each app's admin.py), staff only.
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "consumers",
    "workers.inventory",
    "workers.payments",
    "workers.orders",
]

MIDDLEWARE = [
    # Outermost: under /api/ every answer is problem+json, whatever failed inside.
    "consumers.middleware.ApiProblemsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # A Content-Security-Policy on every response (X-Frame-Options: XFrameOptionsMiddleware below).
    "consumers.security.ContentSecurityPolicyMiddleware",
    # Static files from daphne itself: one process kind less, with cache headers.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "bus.middleware.CorrelationMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
X_FRAME_OPTIONS = "DENY"

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# One database per domain (vertical partitioning); each is a SQLite file unless its URL is set.
DOMAIN_DATABASES = ["inventory", "orders", "payments"]
# PostgreSQL connections per process and database (psycopg's pool).
DATABASE_POOL_SIZE = int(os.environ.get("DATABASE_POOL_SIZE", "8"))


def _database(alias: str) -> dict[str, Any]:
    """DATABASE_URL for "default", <ALIAS>_DATABASE_URL for the others; a SQLite file otherwise."""
    variable = "DATABASE_URL" if alias == "default" else f"{alias.upper()}_DATABASE_URL"
    url = os.environ.get(variable, f"sqlite:///{DATA_DIR / alias}.sqlite3")
    config: dict[str, Any] = dict(dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True))
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Django's SQLite backend, with the threads of a process taking turns to write (see there).
        config["ENGINE"] = "bus.sqlite"
        config["OPTIONS"] = {
            # Seconds a writer may wait: longer than any bus deadline, so a write is refused only
            # when the machine is overloaded (transactions last milliseconds), not for a queue.
            "timeout": 20,
            # Transactions take the write lock up front, so none fails half-way to upgrade one.
            "transaction_mode": "IMMEDIATE",
            # WAL: readers and the writer do not block each other. NORMAL: a commit does not wait
            # for the disk (a power cut may lose the last commits, never corrupt the file).
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        }
        path = Path(config["NAME"])
        config["TEST"] = {"NAME": str(path.with_name(f"test_{path.name}"))}
    elif config["ENGINE"] == "django.db.backends.postgresql":
        # One pool per process and database: without it each of a worker's handler threads keeps a
        # connection of its own to every database it touched, and five processes went past
        # PostgreSQL's default max_connections (100) with 20 clients. Pooled connections are given
        # back after each message or request (CONN_MAX_AGE 0), not closed.
        config["CONN_MAX_AGE"] = 0
        config["OPTIONS"] = {
            **config.get("OPTIONS", {}),
            "pool": {"min_size": 1, "max_size": DATABASE_POOL_SIZE, "timeout": 10},
        }
    return config


def _seconds(variable: str, default: float) -> float:
    """A number of seconds from the environment; a bad value names the variable."""
    text = os.environ.get(variable, str(default))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ImproperlyConfigured(f"{variable}={text!r} is not a number of seconds (default {default}).")
    return value


# How long a saga waits for a domain before it compensates, and how long a dead worker's claim on
# a saga lasts; how long inventory holds reserved stock; how old the edge may serve stock.
ORDERS_GIVE_UP_SECONDS = _seconds("ORDERS_GIVE_UP_SECONDS", 60)
ORDERS_LEASE_SECONDS = _seconds("ORDERS_LEASE_SECONDS", 20)
INVENTORY_HOLD_SECONDS = _seconds("INVENTORY_HOLD_SECONDS", 900)
EDGE_STOCK_TTL = _seconds("EDGE_STOCK_TTL", 2.0)

# Payments accounts spread over PAYMENTS_SHARDS databases by a stable hash of the customer id.
PAYMENTS_SHARDS = int(os.environ.get("PAYMENTS_SHARDS", "1"))
DATABASE_SHARDS = (
    {"payments": [f"payments_{n}" for n in range(PAYMENTS_SHARDS)]} if PAYMENTS_SHARDS > 1 else {}
)
_aliases = [
    "default",
    *(domain for domain in DOMAIN_DATABASES if domain not in DATABASE_SHARDS),
    *(alias for aliases in DATABASE_SHARDS.values() for alias in aliases),
]
DATABASES = {alias: _database(alias) for alias in _aliases}

# A read replica per alias, when <ALIAS>_REPLICA_DATABASE_URL is set: reads go there, except
# the reads of whoever just wrote (read-your-writes, see bus.databases).
DATABASE_REPLICAS: dict[str, list[str]] = {}
for _alias in list(DATABASES):
    if os.environ.get(f"{_alias.upper()}_REPLICA_DATABASE_URL"):
        DATABASES[f"{_alias}_replica"] = _database(f"{_alias}_replica")
        DATABASE_REPLICAS[_alias] = [f"{_alias}_replica"]
# Replicas get their tables from streaming replication; set this where a replica is a plain database.
MIGRATE_REPLICAS = os.environ.get("MIGRATE_REPLICAS") == "1"
DATABASE_ROUTERS = ["bus.databases.DomainRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CHANNEL_LAYERS = channel_layers(
    os.environ.get("REDIS_URL"),
    encryption_keys=[key for key in os.environ.get("BUS_ENCRYPTION_KEYS", "").split(",") if key],
)
BUS: dict[str, Any] = {
    "UP_COMMANDS": ["migrate_all", "seed"],
    "METRICS_TOKEN": os.environ.get("METRICS_TOKEN"),
    # Signatures (bus/identity.py): off unless set; see bus/conf.py.
    "IDENTITY": os.environ.get("BUS_IDENTITY") or None,
    "SIGNING_KEY": os.environ.get("BUS_SIGNING_KEY") or None,
    "TRUSTED_KEYS": os.environ.get("BUS_TRUSTED_KEYS") or None,
    "SIGNATURE_MAX_AGE": float(os.environ.get("BUS_SIGNATURE_MAX_AGE") or 7 * 86400),
}

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise looks here first (empty unless collectstatic ran)
# Served from the apps' static folders, so no collectstatic step stands between a clone and a page.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
LOGIN_REDIRECT_URL = "/"
# Failed sign-ins are counted where every web process sees them (consumers.signin).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "signin": (
        cache_settings(os.environ["REDIS_URL"])
        if os.environ.get("REDIS_URL")
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "signin"}
    ),
}
# Failed attempts allowed per account and per client address within WINDOW seconds.
SIGNIN_THROTTLE = {"ACCOUNT": 5, "ADDRESS": 20, "WINDOW": 900}
CSRF_FAILURE_VIEW = "consumers.problems.csrf_failure"
USE_TZ = True
TIME_ZONE = "UTC"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"bus": {"()": "bus.context.MessageContextFilter"}},
    "formatters": {
        "bus": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s %(message_id)s] %(message)s"
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["bus"], "formatter": "bus"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
