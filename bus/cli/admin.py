"""`bus readonly`, `bus cleanup` and `bus grant`: an operator's switches on the domains and their tables."""

from __future__ import annotations

import datetime

from django.apps import apps
from django.core.management.base import BaseCommand, CommandParser
from django.db import connections

from bus.conf import bus_setting
from bus.contracts import contracts
from bus.databases import primary_for
from bus.models import DeadLetter, DomainMode
from bus.modes import set_read_only
from bus.outbox import purge

from .base import Action, Options, Stop


def readonly(command: BaseCommand, options: Options) -> None:
    domain, on = options["domain"], options["mode"] == "on"
    if domain not in contracts():
        known = ", ".join(sorted(contracts()))
        raise Stop(f"No service is named {domain!r}; the services are {known}.", returncode=8)
    set_read_only(domain, on, options["reason"])
    state = "read-only" if on else "read-write"
    command.stdout.write(f"{domain} is {state}; workers follow within {bus_setting('MODE_CACHE_SECONDS')} s.")


def readonly_arguments(parser: CommandParser) -> None:
    parser.add_argument("domain", help="a service name (`manage.py bus services`)")
    parser.add_argument("mode", choices=["on", "off"])
    parser.add_argument("--reason", default="", help="shown to callers whose writes are refused")


def cleanup(command: BaseCommand, options: Options) -> None:
    seconds = options["older_than"] if options["older_than"] is not None else bus_setting("RETENTION_SECONDS")
    fields = {model: getattr(model, "bus_retention_field", "") for model in apps.get_models()}
    kept = [(model, str(field)) for model, field in fields.items() if field]
    if not kept:
        command.stderr.write("Nothing to clean up: no installed model sets bus_retention_field.")
    for model, field in kept:
        deleted = purge(model, field, datetime.timedelta(seconds=seconds))
        command.stdout.write(f"{model._meta.label}: deleted {deleted} row(s) older than {seconds:g} s")


def cleanup_arguments(parser: CommandParser) -> None:
    parser.add_argument(
        "--older-than", type=float, default=None, help="seconds to keep (settings.BUS['RETENTION_SECONDS'])"
    )


def grant(command: BaseCommand, options: Options) -> None:
    """Let domain database roles use the bus's own tables in the shared database, nothing else there."""
    connection = connections[primary_for("bus")]
    if connection.vendor != "postgresql":
        command.stderr.write(
            f"Nothing to grant: the bus's tables are in {connection.vendor}, which has no roles."
        )
        return
    quote = connection.ops.quote_name
    statements = [
        f"GRANT CONNECT ON DATABASE {quote(connection.settings_dict['NAME'])} TO {{role}}",
        "GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE ON {quote(DeadLetter._meta.db_table)} TO {{role}}",
        f"GRANT SELECT ON {quote(DomainMode._meta.db_table)} TO {{role}}",
    ]
    with connection.cursor() as cursor:
        for role in options["roles"]:
            for statement in statements:
                cursor.execute(statement.format(role=quote(role)))
            command.stdout.write(f"{role} may record dead letters and read the read-only switches.")


def grant_arguments(parser: CommandParser) -> None:
    parser.add_argument("roles", nargs="+", help="PostgreSQL roles of the domains' workers")


READONLY = Action(
    "readonly",
    "switch a domain's read-only mode on or off",
    readonly,
    readonly_arguments,
    description="In read-only mode a domain's workers refuse its write methods and serve its reads.",
)
CLEANUP = Action(
    "cleanup",
    "delete old outbox rows, dedup records and sagas",
    cleanup,
    cleanup_arguments,
    description="Delete delivered outbox rows, dedup records and finished sagas older than --older-than.",
)
GRANT = Action(
    "grant",
    "let domain database roles use the bus's tables",
    grant,
    grant_arguments,
    description=(
        "With a PostgreSQL role per domain, each reaches only its own database; its workers still "
        "record dead letters and read the read-only switches, which live in the shared (default) "
        "database. This grants the given roles exactly that there. Run it after migrating."
    ),
)
