"""Test settings: the project's plus the `echo` and `tally` test domains; in-memory layer unless a
test says otherwise."""

import json
import os
import secrets

# One key for the test run and every process it starts (they inherit the environment), so a
# session signed by one daphne is valid in another.
os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))

from bus.conf import channel_layers
from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.echo", "tests.tally"]
ASGI_APPLICATION = "tests.routing.application"
# Worker subprocesses that tests start get BUS_TEST_REDIS_URL; the test process itself starts
# in-memory, whatever REDIS_URL the developer's shell has, and switches per test.
CHANNEL_LAYERS = channel_layers(os.environ.get("BUS_TEST_REDIS_URL"))
# Processes that tests start may get BUS overrides as JSON in BUS_TEST_SETTINGS.
BUS = {
    "HEARTBEAT_INTERVAL": 0.5,
    "SHUTDOWN_GRACE": 5.0,
    **json.loads(os.environ.get("BUS_TEST_SETTINGS", "{}")),
}

# Handler threads close their connections after each message, as Django does after a request,
# so no test leaves a PostgreSQL session open on a test database it must drop.
for database in DATABASES.values():  # noqa: F405
    if database["ENGINE"] not in ("django.db.backends.sqlite3", "bus.sqlite"):
        database["CONN_MAX_AGE"] = 0

# A killed worker's claim on a saga runs out this soon in tests that kill workers on purpose.
ORDERS_LEASE_SECONDS = float(os.environ.get("ORDERS_TEST_LEASE_SECONDS", "20"))

# --- Browser tests (tests/browser) --------------------------------------------------------------
# The daphne they start may get EDGE_WEBSOCKET as JSON in EDGE_TEST_WEBSOCKET (a short LIFETIME,
# say) and the stock cache's EDGE_STOCK_TTL in seconds in EDGE_TEST_STOCK_TTL. Unset: as configured.
if os.environ.get("EDGE_TEST_WEBSOCKET"):
    EDGE_WEBSOCKET = json.loads(os.environ["EDGE_TEST_WEBSOCKET"])
if os.environ.get("EDGE_TEST_STOCK_TTL"):
    EDGE_STOCK_TTL = float(os.environ["EDGE_TEST_STOCK_TTL"])
