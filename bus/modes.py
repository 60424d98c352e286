"""Read-only mode: a deliberate switch that turns a domain's writes away while its reads go on.

`manage.py bus readonly payments on` stores the flag in the database; every worker re-reads it
at most once per BUS["MODE_CACHE_SECONDS"], so the switch takes effect within that time, with no
restart and no message to lose.
"""

from __future__ import annotations

import logging
import time

from django.db import DatabaseError

from .conf import bus_setting
from .databases import alias_for
from .threads import in_pool

logger = logging.getLogger(__name__)

_cache: dict[str, tuple[float, bool, str]] = {}


def set_read_only(domain: str, read_only: bool, reason: str = "") -> None:
    """Switch a domain's mode, durably; workers see it within the mode cache time."""
    from .models import DomainMode

    DomainMode.objects.using(alias_for("bus", write=True)).update_or_create(
        domain=domain, defaults={"read_only": read_only, "reason": reason}
    )
    _cache.pop(domain, None)


def read_only_modes() -> dict[str, str]:
    """Domains in read-only mode, with the reason given."""
    from .models import DomainMode

    rows = DomainMode.objects.using(alias_for("bus", write=False)).filter(read_only=True)
    return {row.domain: row.reason for row in rows}


def read_only_reason(domain: str) -> str | None:
    """The reason `domain` is read-only, or None when it takes writes (cached briefly)."""
    now = time.monotonic()
    cached = _cache.get(domain)
    if cached is not None and cached[0] > now:
        return cached[2] if cached[1] else None
    try:
        reason = read_only_modes().get(domain)
    except DatabaseError as exc:
        # The control plane's database is down: the domain's own database may be fine, so writes
        # go on rather than stop for a switch nobody could have flipped.
        logger.warning("Could not read the mode of %s (%s); treating it as read-write.", domain, exc)
        reason = None
    _cache[domain] = (now + bus_setting("MODE_CACHE_SECONDS"), reason is not None, reason or "")
    return reason


async def aread_only_reason(domain: str) -> str | None:
    """The async twin of `read_only_reason`; touches the database only when the cache is stale."""
    cached = _cache.get(domain)
    if cached is not None and cached[0] > time.monotonic():
        return cached[2] if cached[1] else None
    reason: str | None = await in_pool(read_only_reason, domain)
    return reason
