"""What the bus looks like right now: live workers, queue depth and mode of every domain."""

from __future__ import annotations

from typing import Any

from .client import default_bus, translate_broker_errors
from .contracts import contracts
from .databases import alias_for
from .models import DeadLetter
from .modes import read_only_modes
from .threads import in_pool


async def astatus() -> dict[str, Any]:
    """Per domain: live workers (heartbeats, with their load), queued messages, read-only reason."""
    layer = default_bus.layer
    read_only = await in_pool(read_only_modes)
    domains = []
    with translate_broker_errors():
        for name in sorted(contracts()):
            domains.append(
                {
                    "domain": name,
                    "workers": await layer.presence(name),
                    "queued": await layer.queue_depth(name),
                    "read_only": read_only.get(name),
                }
            )
    return {"layer": type(layer).__name__, "domains": domains, "dead_letters": await in_pool(_dead_letters)}


def _dead_letters() -> int:
    return int(DeadLetter.objects.using(alias_for("bus", write=False)).filter(replayed_at=None).count())
