"""`manage.py bus`: call, send and publish from a shell; list services; see workers and queues.

    manage.py bus call inventory.stock '{"sku": "A-1"}'
    manage.py bus send inventory.restock '{"sku": "A-1", "quantity": 5}'
    manage.py bus publish inventory.stock_changed '{...}'
    manage.py bus services [--json]
    manage.py bus status [--json]
    manage.py bus readonly payments on [--reason "moving to new hardware"] | off
    manage.py bus cleanup [--older-than SECONDS]
    manage.py bus deadletters [list | show ID | replay ID... | replay --all | purge]

Exit codes: 0 success; 2 bad usage or JSON; 3 invalid arguments (ValidationError) or malformed
message; 4 a declared domain error; 5 a remote error; 6 deadline exceeded; 7 unavailable (no
worker, channel full, Redis unreachable); 8 unknown service, method or event.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser

from bus import deadletters
from bus.client import default_bus, translate_broker_errors
from bus.conf import bus_setting
from bus.contracts import contracts
from bus.databases import alias_for
from bus.exceptions import (
    BadMessage,
    BusError,
    ContractError,
    DeadlineExceeded,
    RemoteError,
    Unavailable,
    UnknownTarget,
    ValidationError,
)
from bus.models import DeadLetter
from bus.modes import set_read_only
from bus.outbox import purge
from bus.status import astatus

EXIT_CODES: list[tuple[type[BusError], int]] = [
    (ValidationError, 3),
    (BadMessage, 3),
    (ContractError, 4),
    (RemoteError, 5),
    (DeadlineExceeded, 6),
    (Unavailable, 7),
    (UnknownTarget, 8),
]


def exit_code(error: BusError) -> int:
    return next((code for kind, code in EXIT_CODES if isinstance(error, kind)), 1)


class Command(BaseCommand):
    help = "Talk to the service bus: call, send, publish, services, status."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        for action, text in (
            ("call", "call a method and print its JSON result"),
            ("send", "send a method as a command (no reply) and print the message id"),
            ("publish", "publish an event and print the message id"),
        ):
            sub = actions.add_parser(action, help=text)
            sub.add_argument("target", help="service.method (or service.event for publish)")
            sub.add_argument("arguments", nargs="?", default="{}", help="a JSON object of arguments")
            if action == "call":
                sub.add_argument("--timeout", type=float, default=None, help="seconds to wait for the reply")
        cleanup = actions.add_parser(
            "cleanup", help="delete delivered outbox rows, dedup records, finished sagas"
        )
        cleanup.add_argument(
            "--older-than",
            type=float,
            default=None,
            help="seconds to keep (settings.BUS['RETENTION_SECONDS'])",
        )
        letters = actions.add_parser("deadletters", help="list, show, replay or purge dead letters")
        letters.add_argument("verb", nargs="?", default="list", choices=["list", "show", "replay", "purge"])
        letters.add_argument("ids", nargs="*", type=int, help="dead letter ids (show, replay)")
        letters.add_argument("--all", action="store_true", help="replay every waiting dead letter")
        readonly = actions.add_parser("readonly", help="switch a domain's read-only mode")
        readonly.add_argument("domain")
        readonly.add_argument("mode", choices=["on", "off"])
        readonly.add_argument("--reason", default="", help="shown to callers whose writes are refused")
        for action, text in (
            ("services", "list contracts with their schemas"),
            ("status", "workers and queues per domain"),
        ):
            sub = actions.add_parser(action, help=text)
            sub.add_argument("--json", action="store_true", help="print JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action in ("services", "status"):
            getattr(self, action)(as_json=options["json"])
            return
        if action == "deadletters":
            self.deadletters(options["verb"], options["ids"], replay_all=options["all"])
            return
        if action == "cleanup":
            self.cleanup(options["older_than"])
            return
        if action == "readonly":
            self.readonly(options["domain"], options["mode"] == "on", options["reason"])
            return
        arguments = self._arguments(options["arguments"])
        try:
            if action == "call":
                result = default_bus.call(options["target"], timeout=options["timeout"], **arguments)
            elif action == "send":
                result = {"message_id": default_bus.send(options["target"], **arguments)}
            else:
                result = {"message_id": default_bus.publish(options["target"], **arguments)}
        except BusError as error:
            self.stderr.write(f"{type(error).__name__} ({error.code}): {error.message}")
            if error.details:
                self.stderr.write(json.dumps(error.details, indent=2, default=str))
            sys.exit(exit_code(error))
        self.stdout.write(json.dumps(result, indent=2))

    def _arguments(self, text: str) -> dict[str, Any]:
        try:
            arguments = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CommandError(
                f'The arguments are not valid JSON ({exc}); give a JSON object, e.g. \'{{"sku": "A-1"}}\'.',
                returncode=2,
            ) from exc
        if not isinstance(arguments, dict):
            raise CommandError(
                f"The arguments must be a JSON object, not {type(arguments).__name__}.", returncode=2
            )
        return arguments

    def services(self, *, as_json: bool) -> None:
        schemas = [contract.json_schema() for _, contract in sorted(contracts().items())]
        if as_json:
            self.stdout.write(json.dumps(schemas, indent=2))
            return
        for schema in schemas:
            summary = schema["description"].splitlines()[0] if schema["description"] else ""
            self.stdout.write(f"{schema['service']}: {summary}")
            for name, method in schema["methods"].items():
                parameters = ", ".join(
                    f"{field}: {spec.get('type', 'object')}"
                    for field, spec in method["arguments"]["properties"].items()
                )
                kind = "read" if method["read"] else "write"
                errors = f"  raises {', '.join(method['errors'])}" if method["errors"] else ""
                self.stdout.write(f"  {schema['service']}.{name}({parameters})  [{kind}]{errors}")
            for name in schema["events"]:
                self.stdout.write(f"  event {schema['service']}.{name}")

    def deadletters(self, verb: str, ids: list[int], *, replay_all: bool) -> None:
        if verb == "list":
            for letter in deadletters.waiting():
                self.stdout.write(
                    f"{letter.id:>6}  {letter.created_at:%Y-%m-%d %H:%M:%S}  {letter.target}  "
                    f"x{letter.attempts}  {letter.error[:80]}"
                )
            return
        if verb == "purge":
            deleted, _ = DeadLetter.objects.using(alias_for("bus", write=True)).all().delete()
            self.stdout.write(f"Deleted {deleted} dead letter(s).")
            return
        if verb == "replay" and replay_all:
            ids = [letter.id for letter in deadletters.waiting()]
        if not ids:
            raise CommandError(
                f"`bus deadletters {verb}` needs dead letter ids (see `bus deadletters list`)."
            )
        for letter_id in ids:
            if verb == "show":
                found = DeadLetter.objects.using(alias_for("bus", write=False)).filter(id=letter_id).first()
                if found is None:
                    raise CommandError(f"No dead letter has id {letter_id}.")
                self.stdout.write(
                    json.dumps(
                        {
                            "id": found.id,
                            "channel": found.channel,
                            "attempts": found.attempts,
                            "error": found.error,
                            "envelope": found.envelope,
                            "replayed_at": str(found.replayed_at),
                        },
                        indent=2,
                    )
                )
                self.stdout.write(found.traceback)
                continue
            taken = deadletters.take_for_replay(letter_id)
            if taken is None:
                raise CommandError(f"Dead letter {letter_id} does not exist or was replayed already.")
            asyncio.run(_replay(taken.channel, deadletters.fresh_attempt(taken.envelope)))
            self.stdout.write(f"Replayed {letter_id} ({taken.target}) onto {taken.channel!r}.")

    def cleanup(self, older_than: float | None) -> None:
        seconds = older_than if older_than is not None else bus_setting("RETENTION_SECONDS")
        for model in apps.get_models():
            field = getattr(model, "bus_retention_field", None)
            if field is not None:
                deleted = purge(model, field, datetime.timedelta(seconds=seconds))
                self.stdout.write(f"{model._meta.label}: deleted {deleted} row(s) older than {seconds:g} s")

    def readonly(self, domain: str, on: bool, reason: str) -> None:
        if domain not in contracts():
            raise CommandError(f"No contract is named {domain!r}; the domains are {sorted(contracts())}.")
        set_read_only(domain, on, reason)
        state = "read-only" if on else "read-write"
        self.stdout.write(
            f"{domain} is {state}; workers follow within {bus_setting('MODE_CACHE_SECONDS')} s."
        )

    def status(self, *, as_json: bool) -> None:
        try:
            report = asyncio.run(astatus())
        except BusError as error:
            self.stderr.write(error.message)
            sys.exit(exit_code(error))
        if as_json:
            self.stdout.write(json.dumps(report, indent=2))
            return
        self.stdout.write(f"dead letters: {report['dead_letters']} (manage.py bus deadletters)")
        for row in report["domains"]:
            mode = f", READ-ONLY ({row['read_only']})" if row["read_only"] is not None else ""
            self.stdout.write(
                f"{row['domain']}: {len(row['workers'])} worker(s), {row['queued']} queued{mode}"
            )
            for worker_id, info in sorted(row["workers"].items()):
                load = f"in flight {info.get('in_flight')}/{info.get('concurrency')}"
                self.stdout.write(f"  {worker_id}  {load}, handled {info.get('handled')}")


async def _replay(channel: str, envelope: dict[str, Any]) -> None:
    with translate_broker_errors():
        await default_bus.layer.send(channel, envelope)
