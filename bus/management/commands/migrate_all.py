"""`manage.py migrate_all`: migrate every database alias, each with the apps the router puts there."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run migrate on every alias in settings.DATABASES (one database per domain)."

    def handle(self, *args: Any, **options: Any) -> None:
        for alias in settings.DATABASES:
            if options["verbosity"]:
                self.stdout.write(f"Migrating {alias!r}")
            call_command(
                "migrate", database=alias, interactive=False, verbosity=max(options["verbosity"] - 1, 0)
            )
