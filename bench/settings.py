"""Settings of the bus workers bench/delivery.py starts: the test settings, with the `sink`
domain (bench/sink.py) served too, and the bus's default heartbeat rather than the tests' fast one."""

import json
import os

from tests.settings import *  # noqa: F403

ASGI_APPLICATION = "bench.routing.application"
BUS = {
    **BUS,  # noqa: F405
    "HEARTBEAT_INTERVAL": 2.0,
    **json.loads(os.environ.get("BUS_TEST_SETTINGS", "{}")),
}
