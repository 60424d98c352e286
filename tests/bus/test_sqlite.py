"""bus.sqlite: the writers of a process take turns at a SQLite file, first come, first served."""

from __future__ import annotations

import functools
import operator
import threading
from collections.abc import Callable, Iterator

import pytest
from django.contrib.auth import get_user_model
from django.db import OperationalError, connections, transaction

from bus.sqlite.base import WriteTurns
from tests.polling import poll


def in_thread(target: Callable[[], None]) -> threading.Thread:
    """Run `target` in a thread that closes its own database connections when done."""

    def run() -> None:
        try:
            target()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_turns_go_to_writers_in_the_order_they_came() -> None:
    turns = WriteTurns("shop.sqlite3")
    turns.acquire(timeout=5)
    order: list[int] = []
    threads = []

    def writer(number: int) -> None:
        turns.acquire(timeout=30)
        order.append(number)
        turns.release()

    for number in range(8):
        threads.append(threading.Thread(target=writer, args=(number,), daemon=True))
        threads[-1].start()
        # The next one comes only once this one waits in the queue.
        poll(lambda: len(turns), functools.partial(operator.eq, number + 1), what=f"writer {number} queued")
    turns.release()
    for thread in threads:
        thread.join(10)
    assert order == list(range(8)), "first come, first served: nobody overtakes a writer that waits"
    assert not turns.locked()


def test_a_writer_that_waits_past_the_timeout_gets_database_is_locked() -> None:
    turns = WriteTurns("shop.sqlite3")
    turns.acquire(timeout=5)
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            turns.acquire(timeout=0.2)
        except OperationalError as error:
            failures.append(error)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    thread.join(10)
    assert len(failures) == 1
    assert str(failures[0]).startswith("database is locked: no turn to write shop.sqlite3 within 0 s")
    assert len(turns) == 0, "a writer that gave up left the queue"
    turns.release()
    assert not turns.locked()


@pytest.fixture
def turns(transactional_db: None) -> Iterator[WriteTurns]:
    connection = connections["default"]
    if connection.vendor != "sqlite":
        pytest.skip("bus.sqlite is the SQLite backend")
    queue: WriteTurns = connection.turns  # type: ignore[attr-defined]  # bus.sqlite's DatabaseWrapper
    yield queue
    assert not queue.locked(), "a turn was left taken"


def test_a_transaction_holds_the_turn_until_it_commits_or_rolls_back(turns: WriteTurns) -> None:
    users = get_user_model().objects
    with transaction.atomic(using="default"):
        users.create(username="ada")
        assert turns.locked()
    assert not turns.locked()
    with pytest.raises(ZeroDivisionError), transaction.atomic(using="default"):
        users.create(username="grace")
        1 / 0  # noqa: B018
    assert not turns.locked()
    assert list(users.values_list("username", flat=True)) == ["ada"]


def test_another_threads_write_waits_its_turn_in_the_process_not_in_sqlite(turns: WriteTurns) -> None:
    users = get_user_model().objects
    with transaction.atomic(using="default"):
        users.create(username="ada")
        # Outside a transaction, one INSERT is a write of its own: it queues behind this one.
        writer = in_thread(lambda: users.get_or_create(username="grace") and None)
        poll(lambda: len(turns) == 1, what="the other thread's INSERT queued for its turn", timeout=10)
    writer.join(10)
    assert sorted(users.values_list("username", flat=True)) == ["ada", "grace"]
