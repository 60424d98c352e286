"""Many processes from one command: daphne plus `runworker` per domain, watched and restarted.

Each child's output is prefixed with its name (coloured on a terminal). A child that dies is
started again after a backoff that doubles up to 30 s, and the supervisor says so. SIGTERM or
SIGINT stops every child with SIGTERM (workers drain their in-flight messages) and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import TextIO

_COLOURS = ["36", "32", "35", "33", "34", "91", "92", "96"]
# A child that lived this long is healthy: its next crash starts the backoff again.
_HEALTHY_AFTER = 30.0


@dataclass
class Child:
    """One supervised process: its command and its restart history."""

    name: str
    command: list[str]
    colour: str = ""
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    backoff: float = field(default=0.5)


class Supervisor:
    """Start every child, restart the ones that die, stop them all on a signal."""

    def __init__(self, children: list[Child], *, out: TextIO = sys.stdout, grace: float = 15.0) -> None:
        colour = out.isatty() and not os.environ.get("NO_COLOR")
        for index, child in enumerate(children):
            child.colour = _COLOURS[index % len(_COLOURS)] if colour else ""
        self.children = children
        self.out = out
        self.grace = grace
        self._stopping = asyncio.Event()

    def say(self, name: str, colour: str, line: str) -> None:
        prefix = f"{name:<14}|"
        if colour:
            prefix = f"\033[{colour}m{prefix}\033[0m"
        self.out.write(f"{prefix} {line}\n")
        self.out.flush()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        watchers = [asyncio.create_task(self._keep(child)) for child in self.children]
        await self._stopping.wait()
        self.say("up", "", f"stopping {len(self.children)} process(es)")
        for child in self._running():
            child.process.terminate()  # type: ignore[union-attr]
        _, late = await asyncio.wait(watchers, timeout=self.grace)
        for child in self._running():
            self.say(child.name, child.colour, f"did not stop within {self.grace:.0f} s; killing it")
            child.process.kill()  # type: ignore[union-attr]
        await asyncio.gather(*late, return_exceptions=True)
        self.say("up", "", "stopped")
        return 0

    async def _keep(self, child: Child) -> None:
        """Run a child until the supervisor stops, restarting it when it dies."""
        while not self._stopping.is_set():
            child.process = await asyncio.create_subprocess_exec(
                *child.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            started = asyncio.get_running_loop().time()
            self.say(
                child.name, child.colour, f"started (pid {child.process.pid}): {' '.join(child.command)}"
            )
            await self._relay(child)
            code = await child.process.wait()
            if self._stopping.is_set():
                self.say(child.name, child.colour, f"stopped (exit {code})")
                return
            if asyncio.get_running_loop().time() - started > _HEALTHY_AFTER:
                child.backoff = 0.5
            child.restarts += 1
            self.say(
                child.name,
                child.colour,
                f"exited with {code}; restarting in {child.backoff:.1f} s (restart {child.restarts})",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), child.backoff)
            child.backoff = min(child.backoff * 2, 30.0)

    async def _relay(self, child: Child) -> None:
        assert child.process is not None and child.process.stdout is not None
        async for raw in child.process.stdout:
            self.say(child.name, child.colour, raw.decode(errors="replace").rstrip())

    def _running(self) -> list[Child]:
        return [
            child for child in self.children if child.process is not None and child.process.returncode is None
        ]
