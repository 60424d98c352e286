"""The ASGI entry point for daphne, and for `runworker` (the `channel` routes)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()  # before routing imports the domains' models

from project.secret_key import require_usable  # noqa: E402

# daphne runs no system checks: refuse here, before serving a request, not on every request.
require_usable()

from project.collector import tune_for_a_server  # noqa: E402
from routing import application  # noqa: E402

tune_for_a_server()

__all__ = ["application"]
