"""Test settings: the project's plus the `echo` test domain; in-memory layer unless a test says otherwise."""

import os

from bus.conf import channel_layers
from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.echo"]
ASGI_APPLICATION = "tests.routing.application"
# Worker subprocesses that tests start get BUS_TEST_REDIS_URL; the test process itself starts
# in-memory, whatever REDIS_URL the developer's shell has, and switches per test.
CHANNEL_LAYERS = channel_layers(os.environ.get("BUS_TEST_REDIS_URL"))
BUS = {"HEARTBEAT_INTERVAL": 0.5, "SHUTDOWN_GRACE": 5.0}

# Handler threads close their connections after each message, as Django does after a request,
# so no test leaves a PostgreSQL session open on a test database it must drop.
for database in DATABASES.values():  # noqa: F405
    database["CONN_MAX_AGE"] = 0
