"""`manage.py migrate_all`: migrate every database alias, each with the apps the router puts there."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run migrate on every alias in settings.DATABASES (one database per domain)."

    def handle(self, *args: Any, **options: Any) -> None:
        replicas = {
            alias for aliases in getattr(settings, "DATABASE_REPLICAS", {}).values() for alias in aliases
        }
        for alias in settings.DATABASES:
            if alias in replicas and not getattr(settings, "MIGRATE_REPLICAS", False):
                # A streaming replica is read-only and gets its tables from its primary.
                continue
            if options["verbosity"]:
                self.stdout.write(f"Migrating {alias!r}")
            call_command(
                "migrate", database=alias, interactive=False, verbosity=max(options["verbosity"] - 1, 0)
            )
