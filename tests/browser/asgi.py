"""The ASGI app that browser tests serve with daphne: the project's routes under the test settings.

`project.asgi` defaults to the project's settings; the test processes use `tests.settings`
(the `echo` domain, BUS_TEST_REDIS_URL, the EDGE_TEST_* overrides), whose routing table is
`tests.routing`.
"""

import os

import django

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
django.setup()  # before the routing table imports the domains' models

from tests.routing import application  # noqa: E402

__all__ = ["application"]
