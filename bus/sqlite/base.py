"""Django's SQLite backend, with the writers of one process taking turns at the file's write lock.

SQLite lets one writer at a time into a database file. Those that find it taken wait in SQLite's
busy handler, which sleeps and tries again with growing pauses (up to 100 ms each), so it is not
a queue: under a steady stream of short writes, a writer that has waited a while tries rarely,
newcomers keep getting in first, and it can wait out its whole busy timeout and fail with
"database is locked" although every transaction lasts milliseconds. That is what 20 clients did
to a worker's 64 handler threads (issue 10: 17% of checkouts answered 504, 20 s waits).

Here a thread first waits for its turn in a first-come, first-served queue per database file
(transactions from BEGIN to COMMIT or ROLLBACK, and single writing statements outside one), and
only then asks SQLite, so the threads of one process take turns and SQLite's busy handler is left
to arbitrate between processes, where there are few contenders. The wait for a turn counts
against the same `timeout` option as SQLite's own.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from django.db import OperationalError
from django.db.backends.sqlite3 import base

# Statements that write, when run on their own outside a transaction (autocommit).
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class WriteTurns:
    """A first-come, first-served lock: on release the longest waiter gets it, nobody barges in."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._mutex = threading.Lock()
        self._held = False
        self._waiting: deque[threading.Lock] = deque()

    def acquire(self, timeout: float) -> None:
        """Wait for this thread's turn; OperationalError ("database is locked") after `timeout` s."""
        with self._mutex:
            if not self._held:
                self._held = True
                return
            baton = threading.Lock()
            baton.acquire()
            self._waiting.append(baton)
        began = time.monotonic()
        if baton.acquire(timeout=timeout):
            return
        with self._mutex:
            if baton in self._waiting:
                self._waiting.remove(baton)
                waited = time.monotonic() - began
                raise OperationalError(
                    f"database is locked: no turn to write {self.name} within {waited:.0f} s, with "
                    f"{len(self._waiting)} more writer(s) of this process waiting. Transactions last "
                    "milliseconds, so the machine is overloaded or one is stuck; PostgreSQL takes more "
                    "writers at once."
                )
        # The turn was handed over just as the wait ran out: take it.

    def release(self) -> None:
        with self._mutex:
            if self._waiting:
                self._waiting.popleft().release()  # handed straight to the next: _held stays True
            else:
                self._held = False

    def locked(self) -> bool:
        """Whether a writer has the turn now."""
        with self._mutex:
            return self._held

    def __len__(self) -> int:
        """Writers waiting now."""
        return len(self._waiting)


_turns: dict[str, WriteTurns] = {}
_turns_lock = threading.Lock()


def turns_for(name: str) -> WriteTurns:
    """The one queue of the process for database file `name`."""
    turns = _turns.get(name)
    if turns is None:
        with _turns_lock:
            turns = _turns.setdefault(name, WriteTurns(name))
    return turns


class DatabaseWrapper(base.DatabaseWrapper):
    """A connection whose transactions, and writes outside them, wait their turn in the process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turn: WriteTurns | None = None  # the queue whose turn this connection has

    @property
    def turns(self) -> WriteTurns:
        """The queue of this connection's file (looked up each time: test runs rename the file)."""
        return turns_for(str(self.settings_dict["NAME"]))

    @property
    def turn_timeout(self) -> float:
        return float(self.settings_dict["OPTIONS"].get("timeout", 5))

    # Private in Django (django-stubs leave it out), and the one place a transaction begins.
    def _start_transaction_under_autocommit(self) -> None:
        turns = self.turns
        turns.acquire(self.turn_timeout)
        self._turn = turns
        try:
            super()._start_transaction_under_autocommit()  # type: ignore[misc]
        except BaseException:
            self._give_turn_back()
            raise

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._give_turn_back()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._give_turn_back()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._give_turn_back()

    def _give_turn_back(self) -> None:
        """Release the turn once the transaction it was for has ended, however it ended."""
        if self._turn is not None and (self.connection is None or not self.connection.in_transaction):
            turns, self._turn = self._turn, None
            turns.release()

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = self.connection.cursor(factory=TurnTakingCursor)
        cursor.wrapper = self
        return cursor


class TurnTakingCursor(base.SQLiteCursorWrapper):
    """A writing statement outside a transaction is a transaction of its own: it waits its turn too."""

    wrapper: DatabaseWrapper

    def execute(self, query: str, params: Any = None) -> Any:
        return self._in_turn(query, super().execute, params)

    def executemany(self, query: str, param_list: Any) -> Any:
        return self._in_turn(query, super().executemany, param_list)

    def _in_turn(self, query: str, run: Callable[[str, Any], Any], arguments: Any) -> Any:
        if self.connection.in_transaction or not query.lstrip()[:7].upper().startswith(_WRITES):
            return run(query, arguments)
        turns = self.wrapper.turns
        turns.acquire(self.wrapper.turn_timeout)
        try:
            return run(query, arguments)
        finally:
            turns.release()
