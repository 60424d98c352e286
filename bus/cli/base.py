"""What every `manage.py bus` action shares: the action table's row, stopping with an exit code,
how a bus error reads, and the note that the in-memory layer sees only its own process."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channels.layers import InMemoryChannelLayer
from django.core.management.base import BaseCommand, CommandError, CommandParser

from bus.client import default_bus
from bus.exceptions import (
    BadMessage,
    BusError,
    ContractError,
    DeadlineExceeded,
    Forbidden,
    InvalidResult,
    RemoteError,
    Unauthenticated,
    Unavailable,
    UnknownTarget,
    ValidationError,
)

Options = dict[str, Any]

# The exit status of each failure, most specific first; what each means, for `--help`.
EXIT_CODES: list[tuple[type[BusError], int]] = [
    (InvalidResult, 5),
    (ValidationError, 3),
    (BadMessage, 3),
    (ContractError, 4),
    (RemoteError, 5),
    (DeadlineExceeded, 6),
    (Unavailable, 7),
    (UnknownTarget, 8),
    (Unauthenticated, 9),
    (Forbidden, 9),
]
MEANINGS: dict[int, str] = {
    0: "success",
    2: "bad usage or JSON (a service alone, without a method or event, lists them)",
    3: "invalid arguments or malformed message",
    4: "a declared domain error",
    5: "a remote error, or a result the contract does not accept",
    6: "deadline exceeded",
    7: "unavailable (no worker, channel full, read-only, Redis unreachable)",
    8: "unknown service, method or event",
    9: "refused: not signed as the worker requires, or this identity may not call it",
}


@dataclass(frozen=True)
class Action:
    """One `manage.py bus ACTION`: its one-line help, its arguments and what runs it."""

    name: str
    help: str
    run: Callable[[BaseCommand, Options], None]
    arguments: Callable[[CommandParser], None] = lambda parser: None
    description: str = ""
    exit_codes: tuple[int, ...] = ()

    def epilog(self) -> str:
        if not self.exit_codes:
            return ""
        lines = [f"  {code}  {MEANINGS[code]}" for code in self.exit_codes]
        details = "`manage.py bus -v 2 ...` prints an error's details too, as JSON."
        return "\n".join(["exit codes:", *lines, "", details])


def with_verbs(verbs: tuple[Action, ...]) -> Callable[[CommandParser], None]:
    """The arguments of an action made of verbs (`bus deadletters replay ID`): a subparser each,
    which runs its verb's handler."""

    def arguments(parser: CommandParser) -> None:
        subparsers = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs")
        for verb in verbs:
            sub = subparsers.add_parser(verb.name, help=verb.help, description=verb.help)
            verb.arguments(sub)
            sub.set_defaults(run=verb.run)

    return arguments


class Stop(CommandError):
    """End the action with `message` on stderr and exit status `returncode`, without a traceback."""

    def __init__(self, message: str, returncode: int = 1) -> None:
        super().__init__(message, returncode=returncode)


def exit_code(error: BusError) -> int:
    """The exit status for a bus error (see EXIT_CODES)."""
    return next((code for kind, code in EXIT_CODES if isinstance(error, kind)), 1)


def describe(error: BusError, *, details: bool = False) -> str:
    """`NoWorker: ...`; the code too only where it says more (`OutOfStock (inventory.OutOfStock)`).

    With `details`, the error's details follow as JSON (what a script may want: sku, available).
    """
    name = type(error).__name__
    head = name if error.code == name else f"{name} ({error.code})"
    text = f"{head}: {error.message}"
    if details and error.details:
        text += "\n" + json.dumps(error.details, indent=2, default=str)
    return text


def per_process_layer() -> bool:
    """True when the channel layer is in memory: it reaches only this process's workers."""
    return isinstance(default_bus.layer, InMemoryChannelLayer)


def per_process_note(what: str) -> str:
    """Why `what` (workers, an event) is not seen by other processes, and what to do."""
    return (
        f"Note: REDIS_URL is not set, so this process has its own in-memory channel layer and "
        f"{what}. A one-process `manage.py up` serves its workers in its own layer, which no other "
        "process can reach: set the same REDIS_URL for `up` and for `manage.py bus`, or see the "
        "running process's GET /api/system."
    )
