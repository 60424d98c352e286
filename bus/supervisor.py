"""Many processes from one command: daphne plus `runworker` per domain, watched and restarted.

Each child's output is prefixed with its name (coloured on a terminal). Whatever a child writes is
relayed: a line longer than LINE_LIMIT bytes is cut with a marker that gives its length, output
with no final newline is relayed when the child ends, and bytes that are not text or would steer
the terminal are shown escaped. A child that dies, or that cannot be started at all (a missing
executable), is started again after a backoff (settings.BUS["RESTART_BACKOFF"]; by default up to 0.5 s,
doubling up to 30 s, with jitter), and the supervisor says so, naming the signal that killed it.
A watcher never gives up while `up` runs: an unexpected error is logged and the child is watched
again. SIGTERM or SIGINT stops every child with SIGTERM (workers drain their in-flight messages)
and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
from dataclasses import dataclass
from typing import TextIO

from .backoff import Backoff
from .conf import backoff_setting

logger = logging.getLogger(__name__)

_COLOURS = ["36", "32", "35", "33", "34", "91", "92", "96"]
# A child that lived this long is healthy: its next crash starts the backoff again.
_HEALTHY_AFTER = 30.0
# The most of one output line that is relayed; the rest is counted in the cut marker.
LINE_LIMIT = 16 * 1024
_READ_SIZE = 64 * 1024
# C0 and C1 control characters but the tab: shown escaped, so a child cannot move the cursor,
# recolour or retitle the operator's terminal, nor split a line with a carriage return.
_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)] if code != 0x09}


@dataclass
class Child:
    """One supervised process: its command and its restart history."""

    name: str
    command: list[str]
    colour: str = ""
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    # Ends since it last ran healthily: the attempt number of its next backoff.
    failures: int = 0
    # Stopped on purpose (a scaler retired it): not started again once it has ended.
    retired: bool = False


def shown(raw: bytes, size: int) -> str:
    """One line of a child's output as it is relayed: `raw` is its start, `size` its full length."""
    text = raw.decode(errors="backslashreplace").translate(_CONTROLS)
    if size > len(raw):
        text += f" … [line cut: {size:,} bytes, the first {len(raw):,} shown]"
    return text


class Lines:
    """Splits a child's output into lines, keeping at most LINE_LIMIT bytes of each."""

    def __init__(self, limit: int = LINE_LIMIT) -> None:
        self.limit = limit
        self._start = bytearray()
        self._size = 0

    def feed(self, chunk: bytes) -> list[str]:
        """The lines that `chunk` completes; an unfinished one waits for the next chunk."""
        *complete, rest = chunk.split(b"\n")
        lines = []
        for part in complete:
            self._keep(part)
            lines.append(self._take())
        self._keep(rest)
        return lines

    def end(self) -> list[str]:
        """The last line, if the output did not end with a newline."""
        return [self._take()] if self._size else []

    def _keep(self, part: bytes) -> None:
        room = self.limit - len(self._start)
        if room > 0:
            self._start += part[:room]
        self._size += len(part)

    def _take(self) -> str:
        raw, size = bytes(self._start), self._size
        if size > len(raw):
            raw = _whole_characters(raw)
        elif raw.endswith(b"\r"):
            raw, size = raw[:-1], size - 1  # a CRLF line end
        line = shown(raw, size)
        self._start.clear()
        self._size = 0
        return line


def _whole_characters(raw: bytes) -> bytes:
    """`raw` without a UTF-8 character that the cut split in two."""
    for back in range(1, min(4, len(raw)) + 1):
        byte = raw[-back]
        if byte < 0x80:
            return raw
        if byte >= 0xC0:  # the lead byte of the last character: is the character whole?
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return raw if length == back else raw[:-back]
    return raw


def _command_line(child: Child) -> str:
    """The child's command as a shell would take it, on one line."""
    return shlex.join(child.command).translate(_CONTROLS)


def ending(code: int) -> str:
    """How a child ended, for people: "killed by SIGKILL" rather than "exited with -9"."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with {code}"


class Supervisor:
    """Start every child, restart the ones that die, stop them all on a signal."""

    def __init__(
        self,
        children: list[Child],
        *,
        out: TextIO = sys.stdout,
        grace: float = 15.0,
        restart: Backoff | None = None,
    ) -> None:
        self._colour = out.isatty() and not os.environ.get("NO_COLOR")
        self.children: list[Child] = []
        self._watchers: set[asyncio.Task[None]] = set()  # one per child, once `run` has started
        self._started = False
        for child in children:
            self.add(child)
        self.out = out
        self.grace = grace
        self.restart = restart or backoff_setting("RESTART_BACKOFF")
        self._stopping = asyncio.Event()
        self._out_failed = False

    def say(self, name: str, colour: str, line: str) -> None:
        """Write one line for `name`; if the output is gone (a closed terminal), say so once in the log."""
        prefix = f"{name:<14}|"
        if colour:
            prefix = f"\033[{colour}m{prefix}\033[0m"
        try:
            self.out.write(f"{prefix} {line}\n")
            self.out.flush()
        except (OSError, ValueError) as exc:
            if not self._out_failed:
                logger.error(
                    "Cannot write the output of the processes (%s: %s); it is dropped.",
                    type(exc).__name__,
                    exc,
                )
            self._out_failed = True
        else:
            if self._out_failed:
                logger.warning("The output of the processes can be written again.")
            self._out_failed = False

    def add(self, child: Child) -> None:
        """Supervise one more child (a scaler adding a worker); started at once if `run` runs."""
        child.colour = _COLOURS[len(self.children) % len(_COLOURS)] if self._colour else ""
        self.children.append(child)
        if self._started:
            self._watchers.add(asyncio.get_running_loop().create_task(self._keep(child)))

    def retire(self, child: Child) -> None:
        """Stop one child for good (SIGTERM: a worker drains) and forget it once it has ended."""
        child.retired = True
        if self._alive(child):
            child.process.terminate()  # type: ignore[union-attr]

    def stop(self) -> None:
        """Stop every child (what SIGTERM and SIGINT do); `run` returns once they have ended."""
        self._stopping.set()

    async def run(self, *, install_signal_handlers: bool = True) -> int:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
        self._started = True
        self._watchers |= {asyncio.create_task(self._keep(child)) for child in self.children}
        await self._stopping.wait()
        self.say("up", "", f"stopping {len(self.children)} process(es)")
        for child in self._running():
            child.process.terminate()  # type: ignore[union-attr]
        _, late = await asyncio.wait(self._watchers, timeout=self.grace)
        for child in self._running():
            self.say(child.name, child.colour, f"did not stop within {self.grace:.0f} s; killing it")
            child.process.kill()  # type: ignore[union-attr]
        await asyncio.gather(*late, return_exceptions=True)
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        self.say("up", "", "stopped")
        return 0

    async def _keep(self, child: Child) -> None:
        """Run a child until the supervisor stops, restarting it when it dies or cannot start."""
        while not self._stopping.is_set() or self._alive(child):
            started = asyncio.get_running_loop().time()
            try:
                what = await self._watch(child)
            except Exception as exc:
                # A bug here must not leave the child unwatched (its pipe full, its death unseen).
                logger.exception("Watching %s failed.", child.name)
                what = f"its watcher failed ({type(exc).__name__}: {exc})"
            if (self._stopping.is_set() or child.retired) and not self._alive(child):
                if child.process is not None and child.process.returncode is not None:
                    self.say(child.name, child.colour, f"stopped ({ending(child.process.returncode)})")
                if child.retired:
                    self.children.remove(child)
                return
            if asyncio.get_running_loop().time() - started > _HEALTHY_AFTER:
                child.failures = 0
            child.failures += 1
            wait = self.restart.delay(child.failures)
            if self._alive(child):
                then = f"watching it again in {wait:.1f} s"
            else:
                child.process = None  # its end is told: the next watch starts it again
                child.restarts += 1
                then = f"restarting in {wait:.1f} s (restart {child.restarts})"
            self.say(child.name, child.colour, f"{what}; {then}")
            await self._pause(wait)

    async def _pause(self, seconds: float) -> None:
        """Wait before the next start; a stop ends the wait, unless a child still runs unwatched."""
        if self._stopping.is_set():
            await asyncio.sleep(seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    @staticmethod
    def _alive(child: Child) -> bool:
        return child.process is not None and child.process.returncode is None

    async def _watch(self, child: Child) -> str:
        """Start the child unless it still runs, relay its output until it ends; how it ended."""
        if child.process is None:
            if self._stopping.is_set() or child.retired:
                return "not started again: stopping"
            try:
                child.process = await asyncio.create_subprocess_exec(
                    *child.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
                )
            except OSError as exc:
                return f"could not start {_command_line(child)} ({type(exc).__name__}: {exc})"
            if self._stopping.is_set():
                child.process.terminate()  # it started as `up` was stopping: stop it like the others
            self.say(child.name, child.colour, f"started (pid {child.process.pid}): {_command_line(child)}")
        await self._relay(child)
        return ending(await child.process.wait())

    async def _relay(self, child: Child) -> None:
        assert child.process is not None and child.process.stdout is not None
        lines = Lines()
        while chunk := await child.process.stdout.read(_READ_SIZE):
            for line in lines.feed(chunk):
                self.say(child.name, child.colour, line)
        for line in lines.end():
            self.say(child.name, child.colour, line)

    def _running(self) -> list[Child]:
        return [child for child in self.children if self._alive(child)]
