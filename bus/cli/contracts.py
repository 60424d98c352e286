"""`bus contracts`: the code's contracts against the committed snapshot (bus/evolution.py)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from bus import evolution

from .base import Action, Options, Stop


def check(command: BaseCommand, options: Options) -> None:
    snapshot = evolution.read_snapshot()
    path = evolution.snapshot_path()
    if snapshot is None:
        raise Stop(f"No contract snapshot at {path}: record one with `manage.py bus contracts snapshot`.")
    changes = evolution.compare(snapshot, evolution.current())
    for change in changes:
        command.stdout.write(str(change))
    breaking = [change for change in changes if change.breaking]
    if breaking:
        raise Stop(
            f"{len(breaking)} breaking change(s) against {path.name}: callers, workers or subscribers "
            "still on the other version would fail during a rolling deploy. Make the change additive "
            '(see README, "Changing a contract"), or, to break on purpose (every side deployed '
            "together), record it with `manage.py bus contracts snapshot`."
        )
    additive = len(changes)
    command.stdout.write(
        f"Contracts match {path.name}"
        + (
            f" but for {additive} additive change(s): record them with `manage.py bus contracts snapshot`."
            if additive
            else "."
        )
    )


def snapshot(command: BaseCommand, options: Options) -> None:
    path = evolution.write_snapshot(evolution.current())
    command.stdout.write(f"Wrote the contracts of {len(evolution.current())} service(s) to {path}.")


VERBS = (
    Action("check", "compare the code's contracts with the snapshot; fail on a breaking change", check),
    Action("snapshot", "record the code's contracts as the snapshot", snapshot),
)


def arguments(parser: CommandParser) -> None:
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs")
    for verb in VERBS:
        sub = verbs.add_parser(verb.name, help=verb.help, description=verb.help)
        sub.set_defaults(run=verb.run)


CONTRACTS = Action(
    "contracts",
    "check the contracts against their snapshot, or record it",
    check,
    arguments,
    description=(
        "Compare every contract with the committed snapshot (BUS['CONTRACTS_SNAPSHOT']) and fail "
        "naming each change that breaks a rolling deploy; `snapshot` records the code's contracts."
    ),
)
