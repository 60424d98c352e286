"""Who sent a message: service identities, their Ed25519 keys, and the signature in the envelope.

A process with a service identity (BUS["IDENTITY"], say "orders") and that service's private key
(BUS["SIGNING_KEY"], a PEM file) signs every request, command and event it sends. Workers with
BUS["TRUSTED_KEYS"] check it before anything runs (bus/verification.py). The signature travels in
the envelope's headers, with who signed and which key:

    headers["signed"] = {"by": "orders", "key": "<key id>", "sig": "<base64 Ed25519 signature>"}

It covers every field of the envelope that says what to do, for whom and until when (type, id,
correlation_id, target, body, deadline, reply_to, sent_at), the signer's identity and key id, and
the contract version header. Not the headers the bus itself changes on the way (a retry's
`attempt` and `not_before`) nor hints that grant nothing (read-your-writes `pins`, `trace`), so a
retried, handed-on, redelivered or replayed message still verifies.

The signed bytes are JSON with sorted keys and no spaces of one list of those values. The wire is
msgpack, which carries a float as a float64 and an int as an int; `json.dumps` writes a float by
its shortest round-tripping repr and an int as digits, so both sides write the same bytes.

A key id is the first 16 hex digits of the SHA-256 of the raw public key: several keys of one
service may be trusted at once (old and new, during a rotation), and the id picks the one to try.
Ed25519, not a shared secret: a verifier holds only public keys, so no worker can forge another
service's messages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from .conf import bus_setting
from .messages import Envelope

__all__ = [
    "HEADER",
    "Signer",
    "Trust",
    "check",
    "key_id",
    "max_age",
    "new_key",
    "signed_bytes",
    "signer",
    "trusted",
]

HEADER = "signed"
# Named in the signed bytes, so that another way of signing can never be mistaken for this one.
_SCHEME = "bus-ed25519-1"
_SERVICE = re.compile(r"^[a-zA-Z\d_-]{1,64}$")

#: Public keys a worker accepts: service -> key id -> key.
Trust = dict[str, dict[str, Ed25519PublicKey]]


def signed_bytes(envelope: Envelope, by: str, key: str) -> bytes:
    """What a signature covers: the canonical bytes of `envelope` as signed by `by` with `key`."""
    covered = [
        _SCHEME,
        envelope["type"],
        envelope["id"],
        envelope["correlation_id"],
        envelope["target"],
        envelope["body"],
        envelope["deadline"],
        envelope["reply_to"],
        envelope["sent_at"],
        by,
        key,
        envelope["headers"].get("contract"),
    ]
    return json.dumps(
        covered, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def key_id(key: Ed25519PublicKey) -> str:
    """The short fingerprint a signature names its key by."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    """This process's identity and the key it signs with."""

    service: str
    key: Ed25519PrivateKey
    key_id: str

    def sign(self, envelope: Envelope) -> None:
        """Add the signature header to `envelope`; sign last, once every covered field is set."""
        signature = self.key.sign(signed_bytes(envelope, self.service, self.key_id))
        envelope["headers"][HEADER] = {
            "by": self.service,
            "key": self.key_id,
            "sig": base64.b64encode(signature).decode(),
        }


# Loaded once per process from settings.BUS; forgotten when a test overrides BUS.
_loaded: dict[str, Any] = {}


def _forget(*, setting: str, **kwargs: Any) -> None:
    if setting == "BUS":
        _loaded.clear()


setting_changed.connect(_forget)


def signer() -> Signer | None:
    """This process's signer, or None when it has no identity (messages go unsigned)."""
    if "signer" not in _loaded:
        _loaded["signer"] = _load_signer(bus_setting("IDENTITY"), bus_setting("SIGNING_KEY"))
    found: Signer | None = _loaded["signer"]
    return found


def trusted() -> Trust | None:
    """The public keys this process's workers accept, or None when they take unsigned messages."""
    if "trust" not in _loaded:
        spec = bus_setting("TRUSTED_KEYS")
        _loaded["trust"] = _load_trust(spec) if spec else None
    found: Trust | None = _loaded["trust"]
    return found


def check() -> None:
    """Read the signature settings now: a wrong key file stops a worker as it starts, not at each
    message it would have refused."""
    signer()
    if trusted() is not None:
        max_age()


def max_age() -> float:
    """BUS["SIGNATURE_MAX_AGE"]: seconds after `sent_at` a signed message is still accepted."""
    value = bus_setting("SIGNATURE_MAX_AGE")
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ImproperlyConfigured(
            f"settings.BUS['SIGNATURE_MAX_AGE'] must be a positive number of seconds, not {value!r}."
        )
    return float(value)


def _check_service(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _SERVICE.match(name):
        raise ImproperlyConfigured(
            f"{where} must be a service name of 1 to 64 ASCII letters, digits, '-' or '_' (it names "
            f"key files, '<service>.pub'), not {name!r}."
        )
    return name


def _load_signer(service: Any, path: Any) -> Signer | None:
    if not service and not path:
        return None
    if not service or not path:
        raise ImproperlyConfigured(
            "settings.BUS['IDENTITY'] and BUS['SIGNING_KEY'] go together (got IDENTITY="
            f"{service!r}, SIGNING_KEY={path!r}): the service this process speaks for and the path "
            "of its private key. Make one with `manage.py bus keys new SERVICE --dir DIR`."
        )
    _check_service(service, "settings.BUS['IDENTITY']")
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            f"settings.BUS['SIGNING_KEY'] = {str(path)!r} cannot be read as an unencrypted PEM "
            f"private key ({exc}); make one with `manage.py bus keys new {service} --dir DIR`."
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ImproperlyConfigured(
            f"settings.BUS['SIGNING_KEY'] = {str(path)!r} is a {type(key).__name__}, not an Ed25519 "
            f"key; make one with `manage.py bus keys new {service} --dir DIR`."
        )
    return Signer(service, key, key_id(key.public_key()))


def _load_trust(spec: Any) -> Trust:
    """BUS["TRUSTED_KEYS"]: a directory of `<service>.pub` and `<service>.<n>.pub` files, or a
    mapping of service -> list of PEM public keys (the text, or a file's path)."""
    if isinstance(spec, str | os.PathLike):
        sources = _directory(Path(spec))
    elif isinstance(spec, Mapping):
        sources = {
            _check_service(service, "A service in settings.BUS['TRUSTED_KEYS']"): [
                (f"TRUSTED_KEYS[{service!r}]", _pem(item)) for item in _listed(service, keys)
            ]
            for service, keys in spec.items()
        }
    else:
        raise ImproperlyConfigured(
            "settings.BUS['TRUSTED_KEYS'] must be a directory of <service>.pub files or a mapping "
            f"of service -> list of PEM public keys, not {type(spec).__name__}."
        )
    trust: Trust = {}
    for service, pems in sources.items():
        for source, pem in pems:
            key = _public_key(source, pem)
            trust.setdefault(service, {})[key_id(key)] = key
    return trust


def _directory(directory: Path) -> dict[str, list[tuple[str, bytes]]]:
    files = sorted(directory.glob("*.pub")) if directory.is_dir() else []
    if not files:
        raise ImproperlyConfigured(
            f"settings.BUS['TRUSTED_KEYS'] = {str(directory)!r} holds no <service>.pub files (or is "
            "not a directory): put there the public key of every service whose messages this "
            "process's workers accept (`manage.py bus keys new SERVICE --dir DIR` makes them)."
        )
    sources: dict[str, list[tuple[str, bytes]]] = {}
    for path in files:
        service = _check_service(path.name.split(".")[0], f"The key file {str(path)!r}'s service")
        sources.setdefault(service, []).append((str(path), path.read_bytes()))
    return sources


def _listed(service: str, keys: Any) -> list[Any]:
    if isinstance(keys, list | tuple) and keys:
        return list(keys)
    raise ImproperlyConfigured(
        f"settings.BUS['TRUSTED_KEYS'][{service!r}] must be a non-empty list of PEM public keys "
        f"(the text, or a file's path), not {keys!r}."
    )


def _pem(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    text = str(item)
    return text.encode() if text.lstrip().startswith("-----BEGIN") else Path(text).read_bytes()


def _public_key(source: str, pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{source} is not a PEM public key ({exc}).") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ImproperlyConfigured(f"{source} is a {type(key).__name__}, not an Ed25519 public key.")
    return key


def new_key(directory: Path, service: str) -> tuple[Path, Path, str]:
    """Make a key pair for `service` in `directory`: `<service>.pem` (private, mode 0600) and
    `<service>.pub`, or `<service>.<n>.pem/.pub` with the next free n when those exist (a
    rotation). Returns both paths and the key id."""
    _check_service(service, "The service")
    directory.mkdir(parents=True, exist_ok=True)
    stem, number = service, 1
    while (directory / f"{stem}.pem").exists() or (directory / f"{stem}.pub").exists():
        number += 1
        stem = f"{service}.{number}"
    key = Ed25519PrivateKey.generate()
    private, public = directory / f"{stem}.pem", directory / f"{stem}.pub"
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public, key_id(key.public_key())
