"""The ASGI app that browser tests serve with daphne: the project's routes under the test settings.

`project.asgi` defaults to the project's settings; the test processes use `tests.settings`
(the `echo` domain, BUS_TEST_REDIS_URL, the EDGE_TEST_* overrides), whose routing table is
`tests.routing`.
"""

import os

import django

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
django.setup()  # before the routing table imports the domains' models

from project.collector import tune_for_a_server  # noqa: E402
from tests.routing import application  # noqa: E402

tune_for_a_server()  # as project/asgi.py does

__all__ = ["application"]
