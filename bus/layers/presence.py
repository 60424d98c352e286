"""The bus extension API (batch receive checks, queue depth, presence), written once.

Both layers validate arguments and interpret presence records the same way; only where the
data lives differs (Redis or process memory), behind five storage primitives.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

__all__ = ["BusExtensions", "Message", "strip_channel_marker"]

Message = dict[str, Any]


def _encode_presence(info: Mapping[str, Any], expires_at: float) -> bytes:
    """Serialize one presence record; JSON so that ``bus status`` output is inspectable."""
    record = {"info": dict(info), "expires_at": expires_at}
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()


def _decode_presence(raw: bytes) -> tuple[dict[str, Any], float] | None:
    """Parse a presence record; ``None`` for anything malformed (treated as dead)."""
    try:
        record = json.loads(raw)
        info = record["info"]
        expires_at = float(record["expires_at"])
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(info, dict):
        return None
    return info, expires_at


def strip_channel_marker(message: Message) -> Message:
    """Drop the ``__asgi_channel__`` key that group_send and process-local sends add."""
    message.pop("__asgi_channel__", None)
    return message


class BusExtensions:
    """The bus extension API, written once over a few storage primitives."""

    expiry: float

    if TYPE_CHECKING:
        # Provided by channels.layers.BaseChannelLayer (untyped); declared for mypy only.
        def require_valid_channel_name(self, name: str, receive: bool = False) -> bool: ...

    # -- storage primitives, implemented by each layer ---------------------------------------

    async def _live_depth(self, channel: str) -> int:
        raise NotImplementedError

    async def _presence_store(self, channel: str, member: str, record: bytes, ttl: float) -> None:
        raise NotImplementedError

    async def _presence_load(self, channel: str) -> dict[str, bytes]:
        raise NotImplementedError

    async def _presence_prune(self, channel: str, dead: Mapping[str, bytes]) -> None:
        raise NotImplementedError

    async def _presence_remove(self, channel: str, member: str) -> None:
        raise NotImplementedError

    # -- validation ---------------------------------------------------------------------------

    def _require_normal_channel(self, channel: str) -> None:
        """Batch receive, depth and presence are for shared (normal) channels only."""
        self.require_valid_channel_name(channel)
        if "!" in channel:
            raise ValueError(f"{channel!r} is a process-local channel; a normal one is needed")

    def _check_batch_args(self, channel: str, max_messages: int, timeout: float) -> None:
        self._require_normal_channel(channel)
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        if timeout < 0 or math.isnan(timeout):
            raise ValueError(f"timeout must be >= 0, got {timeout}")

    # -- public extension API -----------------------------------------------------------------

    async def queue_depth(self, channel: str) -> int:
        """Messages waiting on a normal channel, not counting expired ones."""
        self._require_normal_channel(channel)
        return await self._live_depth(channel)

    async def presence_beat(self, channel: str, member: str, info: Mapping[str, Any], ttl: float) -> None:
        """Record that ``member`` serves ``channel``; the record lives ``ttl`` seconds."""
        self._require_normal_channel(channel)
        if not member:
            raise ValueError("member must be a non-empty string")
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl}")
        record = _encode_presence(info, time.time() + ttl)
        await self._presence_store(channel, member, record, ttl)

    async def presence_leave(self, channel: str, member: str) -> None:
        """Forget ``member`` at once (clean shutdown) instead of waiting for its ttl."""
        self._require_normal_channel(channel)
        await self._presence_remove(channel, member)

    async def presence(self, channel: str) -> dict[str, dict[str, Any]]:
        """Live members of ``channel`` -> their info; dead records are pruned on the way."""
        self._require_normal_channel(channel)
        records = await self._presence_load(channel)
        now = time.time()
        live: dict[str, dict[str, Any]] = {}
        dead: dict[str, bytes] = {}
        for member, raw in records.items():
            decoded = _decode_presence(raw)
            if decoded is None or decoded[1] < now:
                dead[member] = raw
            else:
                live[member] = decoded[0]
        if dead:
            await self._presence_prune(channel, dead)
        return live


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------
