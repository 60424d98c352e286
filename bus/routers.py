"""Vertical partitioning: each domain app lives in the database alias named after its app label.

With DATABASES = {"default": ..., "inventory": ...}, the models of the `inventory` app are read,
written and migrated only in "inventory", and every other app stays in "default". Relations
across databases are refused, because no database can enforce them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Model


def database_for(app_label: str) -> str:
    """The alias that holds an app's tables: its own if DATABASES has one, else "default"."""
    return app_label if app_label in settings.DATABASES else "default"


class DomainRouter:
    """Sends each domain app to its own database (see `database_for`)."""

    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        return database_for(model._meta.app_label)

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        return database_for(model._meta.app_label)

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool:
        return database_for(obj1._meta.app_label) == database_for(obj2._meta.app_label)

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool:
        return db == database_for(app_label)
