"""The worker's gate: who signed a message, whether it still counts, and whether its signer may.

A worker whose process has BUS["TRUSTED_KEYS"] runs `verify` on every request, command and event
before anything else, and `authorise_call` / `authorise_event` once it knows the method or event:

- unsigned, a signature that does not match (the message was changed), a service or key it does
  not trust, or too old (a request past its deadline; any message older than
  BUS["SIGNATURE_MAX_AGE"]): Unauthenticated;
- signed by a service the contract does not name among a method's `callers` (or an event's
  `publishers`, by default the publishing service itself): Forbidden.

Either way the handler never runs and `bus_refused_total{channel, reason}` counts it. A request's
caller gets the error as its reply; a command or event is logged and dropped, like any message
refused for what it is (invalid, a declared error): another try would be refused the same way, and
a dead letter of it would be worse than useless, since replaying one makes the replaying process
send it again, so a forged message would come back with a good signature.

Without TRUSTED_KEYS nothing here runs: nobody's identity is known, so nothing is enforced.
"""

from __future__ import annotations

import base64
import binascii
import time

from cryptography.exceptions import InvalidSignature

from . import identity, messages, metrics
from .exceptions import Forbidden, Unauthenticated
from .targets import Event, Method

__all__ = ["authorise_call", "authorise_event", "verify", "verifying"]


def verifying() -> bool:
    """Whether this process's workers check signatures (BUS["TRUSTED_KEYS"] is set)."""
    return identity.trusted() is not None


def verify(envelope: messages.Envelope, channel: str) -> str:
    """The service that signed `envelope`, once its signature and age check out; else
    Unauthenticated, counted, naming what was wrong and what to do."""
    trust = identity.trusted() or {}
    target = messages.clip(envelope["target"])
    signed = envelope["headers"].get(identity.HEADER)
    if not isinstance(signed, dict) or not all(isinstance(signed.get(k), str) for k in ("by", "key", "sig")):
        raise _refused(
            channel,
            "unsigned",
            f"{target} came unsigned, and this worker accepts only signed messages "
            "(BUS['TRUSTED_KEYS'] is set). Give the sending process its BUS['IDENTITY'] and "
            "BUS['SIGNING_KEY'] (`manage.py bus keys new SERVICE --dir DIR`), and put its public key "
            "among this worker's trusted keys.",
        )
    by, key, signature = str(signed["by"]), str(signed["key"]), str(signed["sig"])
    keys = trust.get(by)
    if keys is None:
        raise _refused(
            channel,
            "unknown_service",
            f"{target} was signed by {messages.quote(by)}, a service this worker does not trust (it "
            f"trusts {', '.join(sorted(trust))}). If that service is yours, add its <service>.pub to "
            "BUS['TRUSTED_KEYS'] and restart the worker.",
            sender=by,
        )
    public = keys.get(key)
    if public is None:
        raise _refused(
            channel,
            "unknown_key",
            f"{target} was signed by {by} with key {messages.quote(key)}, which this worker does not "
            f"trust (it trusts {by}'s keys {', '.join(sorted(keys))}): a new key not yet among "
            f"its trusted keys, or an old one removed. Add {by}'s new <service>.<n>.pub to "
            "BUS['TRUSTED_KEYS'] on every worker before its processes sign with it.",
            sender=by,
        )
    try:
        public.verify(base64.b64decode(signature, validate=True), identity.signed_bytes(envelope, by, key))
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        raise _refused(
            channel,
            "bad_signature",
            f"{target} claims to be signed by {by} (key {key}), but the signature does not match the "
            "message: it was changed after signing, or forged. Nothing ran. Find who else writes to "
            "this Redis.",
            sender=by,
        ) from None
    _require_fresh(envelope, channel, by)
    return by


def _require_fresh(envelope: messages.Envelope, channel: str, by: str) -> None:
    """A replay of a genuine message is refused once it is out of date."""
    now = time.time()
    deadline = envelope["deadline"]
    target = messages.clip(envelope["target"])
    if envelope["type"] == messages.REQUEST and deadline is not None and deadline < now:
        raise _refused(
            channel,
            "expired",
            f"The request {target} from {by} arrived {now - deadline:.3f} s after its deadline: its "
            "caller has given up (or it is a replay). Nothing ran; a caller that still wants it "
            "calls again.",
            sender=by,
        )
    age, limit = now - envelope["sent_at"], identity.max_age()
    if age > limit:
        raise _refused(
            channel,
            "expired",
            f"{target} from {by} was sent {age:.0f} s ago, longer than BUS['SIGNATURE_MAX_AGE'] = "
            f"{limit:.0f} s allows: a replay, or a message that waited too long for a worker. Nothing "
            "ran; send it again if it is still wanted.",
            sender=by,
        )


def authorise_call(method: Method, sender: str | None) -> None:
    """Forbidden (counted) unless `sender` may call or send `method`; no sender: not verifying."""
    if sender is None or method.callers is None or sender in method.callers:
        return
    metrics.refused.labels(method.service, "forbidden").inc()
    raise Forbidden(
        f"{method.target} may be called only by {', '.join(method.callers)}; this message was signed "
        f"by {sender!r}. Call it from a process whose BUS['IDENTITY'] is one of those, or add "
        f"{sender!r} to the callers of {method.target} in its contract.",
        target=method.target,
        callers=list(method.callers),
        sender=sender,
    )


def authorise_event(event: Event, sender: str | None, channel: str) -> None:
    """Forbidden (counted) unless `sender` is one of the event's publishers."""
    if sender is None or sender in event.publishers:
        return
    metrics.refused.labels(channel, "forbidden").inc()
    raise Forbidden(
        f"{event.target} may be published only by {', '.join(event.publishers)}; this one was signed "
        f"by {sender!r}. Publish it from a {event.target.partition('.')[0]} process, or name "
        f"{sender!r} in publishers= of its contract.",
        target=event.target,
        publishers=list(event.publishers),
        sender=sender,
    )


def _refused(channel: str, reason: str, message: str, **details: str) -> Unauthenticated:
    metrics.refused.labels(channel, reason).inc()
    return Unauthenticated(message, reason=reason, **details)
