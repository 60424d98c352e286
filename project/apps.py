from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks

from project.secret_key import HOW_TO_MAKE_ONE, configured, problem


class ProjectConfig(AppConfig):
    """The project's own checks: a process with an unusable secret key refuses to start."""

    name = "project"

    def ready(self) -> None:
        checks.register(check_secret_key, checks.Tags.security)


def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """An error (so `runworker`, `up`, `migrate_all` and `seed` refuse) for an unusable key."""
    reason = problem(configured())
    if reason is None:
        return []
    return [checks.Error(reason, hint=HOW_TO_MAKE_ONE, id="project.E001")]
