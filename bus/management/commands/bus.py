"""`manage.py bus`: call, send and publish from a shell; list services; see workers and queues.

    manage.py bus call inventory.stock '{"sku": "A-1"}'
    manage.py bus call inventory                  # a service alone lists its methods
    manage.py bus send inventory.restock '{"sku": "A-1", "quantity": 5}'
    manage.py bus publish inventory.stock_changed '{...}'
    manage.py bus services [--json]
    manage.py bus status [--json]
    manage.py bus readonly payments on [--reason "moving to new hardware"] | off
    manage.py bus cleanup [--older-than SECONDS]
    manage.py bus deadletters [list | show ID... | replay ID... | replay --all | purge]
    manage.py bus keys new SERVICE --dir DIR | show   # signing keys (bus/identity.py)

The actions live in bus/cli/, one table (`bus.cli.ACTIONS`). Exit codes of call, send and
publish: 0 success; 2 bad usage or JSON; 3 invalid arguments (ValidationError) or malformed
message; 4 a declared domain error; 5 a remote error; 6 deadline exceeded; 7 unavailable (no
worker, channel full, Redis unreachable); 8 unknown service, method or event; 9 refused by the
worker (unsigned, badly signed, or this identity may not call it).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError

from bus.cli import ACTIONS, Stop, describe, exit_code
from bus.exceptions import BusError


class Command(BaseCommand):
    help = (
        "Talk to the service bus from a shell: call, send and publish; list services; see status "
        "and dead letters; switch read-only mode; clean up. `manage.py bus ACTION --help` shows an "
        "action's arguments and exit codes."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions")
        for action in ACTIONS:
            sub = actions.add_parser(
                action.name,
                help=action.help,
                description=action.description or action.help,
                epilog=action.epilog(),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            action.arguments(sub)
            sub.set_defaults(run=action.run)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            try:
                options["run"](self, options)
            except DatabaseError as exc:
                raise Stop(
                    f"The database cannot be read ({exc}). If it was never set up, run "
                    "`manage.py migrate_all` (or `manage.py up`, which does)."
                ) from exc
        except (BusError, Stop) as error:
            # From a shell, a failure is one message on stderr and an exit code; call_command()
            # and --traceback get the exception itself.
            if options["traceback"] or not getattr(self, "_called_from_command_line", False):
                raise
            if isinstance(error, BusError):
                self.stderr.write(describe(error, details=options["verbosity"] >= 2))
                sys.exit(exit_code(error))
            self.stderr.write(str(error))
            sys.exit(error.returncode)
