"""`bus deadletters [list | show ID... | replay ID... | replay --all | purge]`."""

from __future__ import annotations

import asyncio
import json

from django.core.management.base import BaseCommand, CommandParser

from bus import deadletters
from bus.databases import alias_for
from bus.models import DeadLetter

from .base import Action, Options, Stop, per_process_layer, with_verbs

NONE_WAITING = "No dead letters are waiting."
REPLAY_NEEDS_REDIS = (
    "Not replayed: REDIS_URL is not set, so this process has its own in-memory channel layer, "
    "where no worker would receive the messages. Set the REDIS_URL that the workers use."
)


def list_letters(command: BaseCommand, options: Options) -> None:
    letters = deadletters.waiting()
    if not letters:
        command.stderr.write(NONE_WAITING)
    for letter in letters:
        command.stdout.write(
            f"{letter.id:>6}  {letter.created_at:%Y-%m-%d %H:%M:%S}  {letter.target}  "
            f"x{letter.attempts}  {letter.error[:80]}"
        )


def show(command: BaseCommand, options: Options) -> None:
    for letter_id in options["ids"]:
        found = DeadLetter.objects.using(alias_for("bus", write=False)).filter(id=letter_id).first()
        if found is None:
            raise Stop(f"No dead letter has id {letter_id}; `manage.py bus deadletters` lists them.")
        shown = {
            "id": found.id,
            "channel": found.channel,
            "attempts": found.attempts,
            "error": found.error,
            "envelope": found.envelope,
            "replayed_at": str(found.replayed_at),
        }
        command.stdout.write(json.dumps(shown, indent=2))
        command.stdout.write(found.traceback)


def replay(command: BaseCommand, options: Options) -> None:
    ids: list[int] = [letter.id for letter in deadletters.waiting()] if options["all"] else options["ids"]
    if not ids and options["all"]:
        command.stderr.write(f"{NONE_WAITING} Nothing to replay.")
        return
    if not ids:
        raise Stop("Name the dead letters to replay (ids from `bus deadletters`), or --all.", returncode=2)
    if per_process_layer():
        # Sent into this process's own layer, where no worker listens, a replay would be lost.
        raise Stop(REPLAY_NEEDS_REDIS, returncode=7)
    for letter_id in ids:
        taken = deadletters.take_for_replay(letter_id)
        if taken is None:
            raise Stop(f"Dead letter {letter_id} does not exist or was replayed already.")
        asyncio.run(deadletters.send_again(taken.channel, deadletters.fresh_attempt(taken.envelope)))
        command.stdout.write(f"Replayed {letter_id} ({taken.target}) onto {taken.channel!r}.")


def purge(command: BaseCommand, options: Options) -> None:
    deleted, _ = DeadLetter.objects.using(alias_for("bus", write=True)).all().delete()
    command.stdout.write(f"Deleted {deleted} dead letter(s).")


def _ids(parser: CommandParser, nargs: str) -> None:
    parser.add_argument("ids", nargs=nargs, type=int, metavar="ID", help="ids from `bus deadletters`")


def _replay_arguments(parser: CommandParser) -> None:
    _ids(parser, "*")
    parser.add_argument("--all", action="store_true", help="replay every waiting dead letter")


VERBS = (
    Action("list", "dead letters not replayed yet, oldest first (the default)", list_letters),
    Action(
        "show",
        "one dead letter's envelope, error and traceback",
        show,
        lambda parser: _ids(parser, "+"),
    ),
    Action(
        "replay",
        "send dead letters again, with the same message id",
        replay,
        _replay_arguments,
    ),
    Action("purge", "delete every dead letter, replayed or not", purge),
)


DEADLETTERS = Action(
    "deadletters",
    "list, show, replay or purge dead letters",
    list_letters,
    with_verbs(VERBS),
    description="Commands and events that kept failing, kept with their envelope and traceback.",
)
