"""What the bus looks like right now: live workers, queues and mode of every domain."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from channels.routing import get_default_application
from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic refuses typing's on Python < 3.12

from .client import default_bus, translate_broker_errors
from .contracts import contracts
from .databases import alias_for
from .models import DeadLetter
from .modes import read_only_modes
from .threads import in_pool
from .worker import served_channels


@with_config(ConfigDict(extra="forbid"))
class DomainStatus(TypedDict):
    domain: str
    workers: Annotated[
        dict[str, dict[str, Any]], Field(description="live workers by id, with what each reports")
    ]
    queued: Annotated[int, Field(description="calls, commands and events waiting for a worker")]
    held: Annotated[int, Field(description="commands and events workers are handling (at-least-once)")]
    retrying: Annotated[int, Field(description="commands and events waiting for their next try")]
    read_only: Annotated[
        str | None, Field(description="why the domain is read-only; null when it takes writes")
    ]
    versions: Annotated[
        dict[str, int],
        Field(description="contract versions its live workers serve, with how many serve each"),
    ]


@with_config(ConfigDict(extra="forbid"))
class SystemStatus(TypedDict):
    """What `manage.py bus status` and GET /api/system show: the shape is declared here only."""

    layer: str
    domains: list[DomainStatus]
    dead_letters: int


async def astatus() -> SystemStatus:
    """Per domain: live workers (heartbeats, with their load), queued messages, read-only reason."""
    layer = default_bus.layer
    read_only = await in_pool(read_only_modes)
    domains: list[DomainStatus] = []
    with translate_broker_errors():
        for name in _domains():
            durable = await layer.durable_depth(name) if default_bus.durable else None
            workers = await layer.presence(name)
            domains.append(
                DomainStatus(
                    domain=name,
                    workers=workers,
                    queued=await layer.queue_depth(name) + (durable.waiting if durable else 0),
                    held=durable.held if durable else 0,
                    retrying=durable.delayed if durable else 0,
                    read_only=read_only.get(name),
                    versions=_versions(name, workers),
                )
            )
    return SystemStatus(
        layer=type(layer).__name__, domains=domains, dead_letters=await in_pool(_dead_letters)
    )


def _dead_letters() -> int:
    return int(DeadLetter.objects.using(alias_for("bus", write=False)).filter(replayed_at=None).count())


def _versions(domain: str, workers: dict[str, dict[str, Any]]) -> dict[str, int]:
    """How many live workers serve each version of the domain's contract ("?" for one that does
    not say: a worker older than contract versions)."""
    counted = Counter(str((info.get("contracts") or {}).get(domain, "?")) for info in workers.values())
    return dict(sorted(counted.items()))


def _domains() -> list[str]:
    """The domains this deployment routes (routing.py's `channel` entry), else every contract
    this process declares."""
    routed = served_channels(get_default_application())
    return routed or sorted(contracts())
