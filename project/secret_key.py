"""The secret key: never empty and never a published one.

Only the one-process demo (no REDIS_URL: every domain in one process on the in-memory layer)
may make a key of its own, kept in the data folder so sessions survive a restart. Every other
way of starting refuses at once, through `usable()`: `project.apps` turns it into a system
check that every management command runs first, and `project.asgi` raises it before daphne
serves a request.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

#: Keys that have been published (in this repository's history, Django's templates, tutorials).
PUBLISHED = frozenset({"dev-only-insecure-key", "change-me-in-production", "secret", "changeme"})

HOW_TO_MAKE_ONE = (
    "Set DJANGO_SECRET_KEY to a long random value, the same for every web process, for example "
    "the output of: python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"
)


def demo_key(data_dir: Path) -> str:
    """This installation's own key in `data_dir`, made on first use (readable by the owner only)."""
    path = data_dir / "secret_key"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


def problem(key: str) -> str | None:
    """Why `key` must not be used, or None when it may."""
    if not key:
        return "DJANGO_SECRET_KEY is not set (and REDIS_URL is, so this is not the one-process demo)."
    if key in PUBLISHED or key.startswith("django-insecure-"):
        return f"DJANGO_SECRET_KEY is a published value ({key[:24]!r}): anyone can forge sessions with it."
    return None


def configured() -> str:
    """settings.SECRET_KEY, or "" where Django refuses to hand out an empty one."""
    try:
        return str(settings.SECRET_KEY)
    except ImproperlyConfigured:
        return ""


def require_usable() -> None:
    """Raise ImproperlyConfigured, naming the setting and the fix, unless the key may be used."""
    reason = problem(configured())
    if reason is not None:
        raise ImproperlyConfigured(f"{reason} {HOW_TO_MAKE_ONE}")
