"""`bus keys`: make a service's Ed25519 key pair, and show the ids of the keys this process uses."""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandParser

from bus import identity

from .base import Action, Options, Stop, with_verbs


def new(command: BaseCommand, options: Options) -> None:
    directory = Path(options["dir"])
    try:
        private, public, key = identity.new_key(directory, options["service"])
    except ImproperlyConfigured as exc:
        raise Stop(str(exc), returncode=2) from exc
    except OSError as exc:
        raise Stop(f"Could not write the key pair in {directory}: {exc}.") from exc
    service = options["service"]
    command.stdout.write(key)
    command.stderr.write(
        f"Key {key} of {service}:\n"
        f"  private {private}  give it to {service}'s processes only (BUS_SIGNING_KEY), mode 0600\n"
        f"  public  {public}  copy it into every worker's BUS_TRUSTED_KEYS directory\n"
        "Rotating: trust the new public key everywhere first, then switch the signing key, then "
        "remove the old public key."
    )


def show(command: BaseCommand, options: Options) -> None:
    try:
        signer, trust = identity.signer(), identity.trusted()
    except ImproperlyConfigured as exc:
        raise Stop(str(exc)) from exc
    if signer is None:
        command.stdout.write("signs as: nobody (BUS['IDENTITY'] is not set; messages go unsigned)")
    else:
        command.stdout.write(f"signs as: {signer.service} with key {signer.key_id}")
    if trust is None:
        command.stdout.write("trusts: anyone (BUS['TRUSTED_KEYS'] is not set; nothing is checked)")
        return
    for service, keys in sorted(trust.items()):
        command.stdout.write(f"trusts {service}: {', '.join(sorted(keys))}")


def _new_arguments(parser: CommandParser) -> None:
    parser.add_argument("service", help="the service the key speaks for (its BUS_IDENTITY)")
    parser.add_argument("--dir", required=True, help="where to write <service>[.<n>].pem and .pub")


VERBS = (
    Action(
        "new",
        "make a key pair for SERVICE in DIR; prints the key id",
        new,
        _new_arguments,
    ),
    Action("show", "the identity this process signs as and the keys its workers trust", show),
)


KEYS = Action(
    "keys",
    "make a signing key pair, or show the keys in use",
    show,
    with_verbs(VERBS),
    description=(
        "Ed25519 keys that sign what a process sends (BUS['IDENTITY'], BUS['SIGNING_KEY']) and that "
        "workers check (BUS['TRUSTED_KEYS']): `keys new SERVICE --dir DIR`, `keys show`."
    ),
)
