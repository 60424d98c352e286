"""`manage.py bus` as a person meets it: its help, its messages and its exit codes.

Most tests run the command as its own process (`run_bus`); an empty redis URL gives that process
the in-memory layer, as a shell without REDIS_URL would. The exit codes of real calls against a
worker are in test_worker_processes.py (`test_bus_command_line`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.management import call_command

from bus import deadletters
from bus.cli import Stop
from bus.management.commands.bus import Command
from tests.conftest import UpProcess, WorkerProcess, run_bus
from tests.echo.contract import Echo
from tests.site import wait_ready

StartWorker = Callable[..., WorkerProcess]
IN_MEMORY = ""  # run_bus with no Redis URL: the process gets the in-memory layer

PER_PROCESS_NOTE = (
    "Note: REDIS_URL is not set, so this process has its own in-memory channel layer and {what}. "
    "A one-process `manage.py up` serves its workers in its own layer, which no other process can "
    "reach: set the same REDIS_URL for `up` and for `manage.py bus`, or see the running process's "
    "GET /api/system.\n"
)


@pytest.mark.redis
def test_an_error_names_its_type_once_and_its_code_where_that_says_more(
    redis_layer: str, start_worker: StartWorker, worker_data_dir: Path
) -> None:
    nobody = run_bus(worker_data_dir, redis_layer, "call", "echo.add", '{"a": 1}')
    assert (nobody.returncode, nobody.stderr) == (
        7,
        "NoWorker: No live worker serves 'echo': start one with `python manage.py runworker echo`; "
        "`manage.py bus status` shows the workers that are alive.\n",
    )
    start_worker(redis_layer, "echo")
    refused = run_bus(worker_data_dir, redis_layer, "call", "echo.refuse", '{"reason": "because"}')
    assert (refused.returncode, refused.stdout, refused.stderr) == (
        4,
        "",
        "Refused (echo.Refused): Refused: because\n",
    )
    detailed = run_bus(worker_data_dir, redis_layer, "-v", "2", "call", "echo.refuse", '{"reason": "why"}')
    assert (detailed.returncode, detailed.stderr) == (
        4,
        'Refused (echo.Refused): Refused: why\n{\n  "reason": "why"\n}\n',
    ), "-v 2 adds the details a script may want"


def test_a_service_without_a_method_lists_its_methods_with_their_signatures(tmp_path: Path) -> None:
    listed = run_bus(tmp_path, IN_MEMORY, "call", "echo", "{}")
    first, *methods = listed.stderr.splitlines()
    assert listed.returncode == 2, "bad usage, as documented in `bus call --help`"
    assert listed.stdout == ""
    assert first == "`bus call echo` names a service, not a method; echo has these methods:"
    assert [line.split("(")[0] for line in methods] == [f"  echo.{name}" for name in Echo.methods]
    assert "  echo.add(a: integer, b: integer = 1)  [read; send at-least-once]" in methods
    assert "  echo.count(items: array[Item])  [read; send at-least-once]" in methods
    assert "  echo.refuse(reason: string)  [write; send at-least-once]  raises echo.Refused" in methods

    sent = run_bus(tmp_path, IN_MEMORY, "send", "echo.", "{}")
    assert sent.returncode == 2
    assert sent.stderr.splitlines() == [
        "`bus send echo.` names a service, not a method; echo has these methods:",
        *methods,
    ]


def test_publish_with_a_service_alone_lists_its_events() -> None:
    with pytest.raises(Stop) as listed:
        call_command("bus", "publish", "echo")
    assert listed.value.returncode == 2
    assert str(listed.value) == (
        "`bus publish echo` names a service, not an event; echo publishes these events:\n"
        "  event echo.happened(text: string)  [at-least-once]"
    )
    with pytest.raises(Stop) as nothing:
        call_command("bus", "publish", "presentation")
    assert str(nothing.value) == (
        "`bus publish presentation` names a service, not an event; presentation publishes no events."
    )
    with pytest.raises(Stop) as no_methods:
        call_command("bus", "call", "presentation")
    assert str(no_methods.value) == (
        "`bus call presentation` names a service, not a method; presentation has no methods."
    )


def test_an_unknown_service_is_still_exit_8_with_the_known_services(tmp_path: Path) -> None:
    unknown = run_bus(tmp_path, IN_MEMORY, "call", "shipping", "{}")
    assert unknown.returncode == 8
    assert unknown.stderr.startswith("UnknownTarget: Unknown method 'shipping': name it as 'service.method'")


@pytest.mark.db
@pytest.mark.django_db(databases="__all__")
def test_empty_listings_say_so_on_stderr_and_keep_stdout_empty() -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command("bus", "deadletters", stdout=out, stderr=err)
    assert (out.getvalue(), err.getvalue()) == ("", "No dead letters are waiting.\n")
    out, err = io.StringIO(), io.StringIO()
    call_command("bus", "deadletters", "replay", "--all", stdout=out, stderr=err)
    assert (out.getvalue(), err.getvalue()) == ("", "No dead letters are waiting. Nothing to replay.\n")
    with pytest.raises(Stop, match=r"Name the dead letters to replay .*, or --all\.") as bare:
        call_command("bus", "deadletters", "replay")
    assert bare.value.returncode == 2


@pytest.mark.db
@pytest.mark.django_db(databases="__all__")
def test_a_replay_into_the_in_memory_layer_is_refused_and_the_letter_kept() -> None:
    letter = deadletters.bury("echo", {"id": "m-1", "target": "echo.record"}, "RuntimeError", "", 3)
    with pytest.raises(Stop) as refused:
        call_command("bus", "deadletters", "replay", str(letter.id))
    assert refused.value.returncode == 7
    assert str(refused.value) == (
        "Not replayed: REDIS_URL is not set, so this process has its own in-memory channel layer, "
        "where no worker would receive the messages. Set the REDIS_URL that the workers use."
    )
    assert [waiting.id for waiting in deadletters.waiting()] == [letter.id], "still there to replay"


def test_bus_help_lists_every_action_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = Command().create_parser("manage.py", "bus").format_help()
    assert text.split("actions:\n  ACTION\n")[1].splitlines() == [
        "    call                call a method and print its JSON result",
        "    send                send a command (no reply); print its message id",
        "    publish             publish an event; print its message id",
        "    services            list services: methods with arguments, events",
        "    status              workers, queued messages and modes per domain",
        "    deadletters         list, show, replay or purge dead letters",
        "    contracts           check the contracts against their snapshot, or record",
        "                        it",
        "    asyncapi            print the AsyncAPI 3.0 document of the bus",
        "    keys                make a signing key pair, or show the keys in use",
        "    readonly            switch a domain's read-only mode on or off",
        "    cleanup             delete old outbox rows, dedup records and sagas",
        "    grant               let domain database roles use the bus's tables",
    ]


def test_call_help_lists_the_exit_codes_and_send_those_it_can_give(tmp_path: Path) -> None:
    call = run_bus(tmp_path, IN_MEMORY, "call", "--help")
    assert call.returncode == 0
    assert call.stdout.endswith(
        "exit codes:\n"
        "  0  success\n"
        "  2  bad usage or JSON (a service alone, without a method or event, lists them)\n"
        "  3  invalid arguments or malformed message\n"
        "  4  a declared domain error\n"
        "  5  a remote error, or a result the contract does not accept\n"
        "  6  deadline exceeded\n"
        "  7  unavailable (no worker, channel full, read-only, Redis unreachable)\n"
        "  8  unknown service, method or event\n"
        "  9  refused: not signed as the worker requires, or this identity may not call it\n"
        "\n"
        "`manage.py bus -v 2 ...` prints an error's details too, as JSON.\n"
    )
    send = run_bus(tmp_path, IN_MEMORY, "send", "--help")
    codes = send.stdout.split("exit codes:\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in codes] == ["0", "2", "3", "7", "8"], "no reply: no 4, 5 or 6"


@pytest.mark.db
@pytest.mark.django_db(databases="__all__")
def test_status_on_the_in_memory_layer_says_why_it_sees_no_worker() -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command("bus", "status", "--json", stdout=out, stderr=err)
    assert {row["domain"]: row["workers"] for row in json.loads(out.getvalue())["domains"]}["echo"] == {}
    assert err.getvalue() == PER_PROCESS_NOTE.format(what="cannot see the workers of any other process")


def test_publish_on_the_in_memory_layer_says_nobody_else_hears_it(tmp_path: Path) -> None:
    published = run_bus(tmp_path, IN_MEMORY, "publish", "echo.happened", '{"text": "hi"}')
    assert published.returncode == 0 and "message_id" in json.loads(published.stdout)
    assert published.stderr == PER_PROCESS_NOTE.format(
        what="the event reaches only subscribers in this process"
    )


def test_a_database_never_set_up_is_named_with_the_fix_not_a_traceback(tmp_path: Path) -> None:
    listed = run_bus(tmp_path, IN_MEMORY, "deadletters")
    assert (listed.returncode, listed.stderr) == (
        1,
        "The database cannot be read (no such table: bus_deadletter). If it was never set up, run "
        "`manage.py migrate_all` (or `manage.py up`, which does).\n",
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_status_beside_a_one_process_up_says_why_it_counts_no_workers(tmp_path: Path) -> None:
    up = UpProcess(tmp_path, None)
    try:
        ready = wait_ready(up.visitor)
        assert all(count >= 1 for count in ready["domains"].values()), "the page sees its workers"
        status = run_bus(tmp_path, IN_MEMORY, "status")
        assert status.returncode == 0
        quiet = "inventory: 0 worker(s), 0 queued, 0 being handled, 0 waiting to retry"
        assert quiet in status.stdout.splitlines()
        assert status.stderr == PER_PROCESS_NOTE.format(what="cannot see the workers of any other process")
        assert up.stop() == 0
    finally:
        up.close()
