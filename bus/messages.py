"""The wire format: what a request, a command, an event and a reply look like on the layer.

Every message is a dict that msgpack (channels-redis's codec) can carry. Requests, commands and
events share one envelope; `headers` is open for later needs (attempt counts, trace context,
read-your-writes tokens) without a format change.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Literal, TypedDict

import msgpack

from .exceptions import BadMessage, BusError, MessageTooLarge

REQUEST = "bus.request"
COMMAND = "bus.command"
EVENT = "bus.event"
REPLY = "bus.reply"
ENVELOPE_TYPES = (REQUEST, COMMAND, EVENT)

# Channels' own rule for channel and group names (channels.layers.BaseChannelLayer).
_NAME = re.compile(r"^[a-zA-Z\d\-_.]+$")
_MAX_NAME_LENGTH = 99


class Envelope(TypedDict):
    """A request, command or event."""

    type: str
    id: str
    correlation_id: str
    target: str
    body: dict[str, Any]
    deadline: float | None
    reply_to: str | None
    sent_at: float
    headers: dict[str, Any]


class ErrorBody(TypedDict):
    kind: str
    code: str
    message: str
    details: dict[str, Any]


class Reply(TypedDict):
    """The answer to a request: a result or an error, matched to its request by `in_reply_to`."""

    type: Literal["bus.reply"]
    id: str
    in_reply_to: str
    correlation_id: str
    ok: bool
    result: Any
    error: ErrorBody | None
    headers: dict[str, Any]


# How much of a value from the wire a log line or an error quotes: enough to recognise it, never a
# whole message (a 200 KB `type` made one log line of 200 KB).
QUOTE_LIMIT = 200


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` as it is, or its first `limit` characters and its full size in bytes."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text.encode(errors='replace')):,} bytes)"


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """repr(value) for a log line or an error, cut to about `limit` characters with the full size."""
    if isinstance(value, str | bytes) and len(value) > limit:
        size = len(value.encode(errors="replace")) if isinstance(value, str) else len(value)
        return f"{value[:limit]!r}… ({size:,} bytes)"
    return clip(repr(value), limit)


def new_id() -> str:
    return uuid.uuid4().hex


def check_name(name: str, what: str = "channel name") -> str:
    """Refuse a name Channels would refuse, saying why before anything is sent."""
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > _MAX_NAME_LENGTH:
        raise BadMessage(
            f"{what.capitalize()} {quote(name)} is not valid: use at most {_MAX_NAME_LENGTH} ASCII "
            "letters, digits, '-', '_' or '.'.",
            name=str(name),
        )
    return name


def envelope(
    type: str,
    target: str,
    body: dict[str, Any],
    *,
    correlation_id: str | None = None,
    deadline: float | None = None,
    reply_to: str | None = None,
    headers: dict[str, Any] | None = None,
    message_id: str | None = None,
) -> Envelope:
    """A new envelope, with a fresh id unless a resent message keeps its own; the correlation id is
    inherited when given."""
    message_id = message_id or new_id()
    return {
        "type": type,
        "id": message_id,
        "correlation_id": correlation_id or message_id,
        "target": target,
        "body": body,
        "deadline": deadline,
        "reply_to": reply_to,
        "sent_at": time.time(),
        "headers": headers or {},
    }


def reply(
    request: Envelope,
    *,
    result: Any = None,
    error: BusError | None = None,
    headers: dict[str, Any] | None = None,
) -> Reply:
    """The answer to `request`; also used for malformed requests, so it reads only `id`."""
    return {
        "type": "bus.reply",
        "id": new_id(),
        "in_reply_to": request["id"],
        "correlation_id": str(request.get("correlation_id") or request["id"]),
        "ok": error is None,
        "result": result,
        "error": error.to_wire() if error is not None else None,  # type: ignore[typeddict-item]
        "headers": headers or {},
    }


def check_size(message: dict[str, Any], limit: int) -> None:
    """Refuse a message whose encoding exceeds `limit` bytes, or that msgpack cannot encode."""
    try:
        size = len(msgpack.packb(message, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadMessage(
            f"The message cannot be encoded for the bus ({exc}); send only JSON-compatible values "
            "(str, int, float, bool, None, lists and dicts with str keys).",
        ) from exc
    if size > limit:
        raise MessageTooLarge(
            f"The message is {size:,} bytes, over the limit of {limit:,} "
            "(settings.BUS['MAX_MESSAGE_BYTES']); send a reference to the data instead of the data.",
            size=size,
            limit=limit,
        )


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "correlation_id": (str,),
    "target": (str,),
    "body": (dict,),
    "deadline": (float, int, type(None)),
    "reply_to": (str, type(None)),
    "sent_at": (float, int),
    "headers": (dict,),
}


def parse_envelope(message: Any) -> Envelope:
    """Check a received message field by field; the error names every field that is wrong."""
    if not isinstance(message, dict):
        raise BadMessage(f"A bus message must be a dict, not {type(message).__name__}.")
    problems = []
    if message.get("type") not in ENVELOPE_TYPES:
        problems.append(
            f"'type' must be one of {', '.join(ENVELOPE_TYPES)} (got {quote(message.get('type'))})"
        )
    for field, types in _FIELD_TYPES.items():
        if field not in message:
            problems.append(f"'{field}' is missing")
        elif not isinstance(message[field], types) or isinstance(message[field], bool):
            problems.append(f"'{field}' has the wrong type ({type(message[field]).__name__})")
    if problems:
        raise BadMessage("Malformed bus message: " + "; ".join(problems) + ".", problems=problems)
    return message  # type: ignore[return-value]
