"""The ASGI entry point for daphne, and for `runworker` (the `channel` routes)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()  # before routing imports the domains' models

from project.collector import tune_for_a_server  # noqa: E402
from routing import application  # noqa: E402

tune_for_a_server()

__all__ = ["application"]
