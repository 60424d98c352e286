"""The supervisor behind `up`, with real child processes: nothing a child writes is lost, no child
is left unwatched, a start that fails is tried again."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bus.backoff import Backoff
from bus.supervisor import LINE_LIMIT, Child, Lines, Supervisor, ending

pytestmark = [pytest.mark.timeout(60)]


class Terminal(io.StringIO):
    """What `up` writes, kept line by line; a test awaits the line it expects."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self._written = asyncio.Event()

    def write(self, text: str) -> int:
        self.lines.extend(text.splitlines())
        self._written.set()
        return len(text)

    def having(self, part: str) -> list[str]:
        return [line for line in self.lines if part in line]

    async def line(self, part: str, count: int = 1, timeout: float = 30) -> str:
        """The `count`-th line that contains `part`, once it is written."""

        async def written() -> str:
            while len(self.having(part)) < count:
                self._written.clear()
                await self._written.wait()
            return self.having(part)[count - 1]

        try:
            return await asyncio.wait_for(written(), timeout)
        except TimeoutError:
            pytest.fail(f"No line with {part!r} (x{count}) within {timeout} s; written:\n" + self.tail())

    def tail(self) -> str:
        return "\n".join(line[:300] for line in self.lines[-40:])


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# The default restart backoff without its jitter, so that a test knows each wait.
STEADY = Backoff(0.5, 30.0, jitter=0)


@asynccontextmanager
async def supervising(
    *children: Child, out: Terminal, restart: Backoff | None = STEADY
) -> AsyncIterator[Supervisor]:
    supervisor = Supervisor(list(children), out=out, grace=10, restart=restart)
    running = asyncio.create_task(supervisor.run(install_signal_handlers=False))
    try:
        yield supervisor
    finally:
        supervisor.stop()
        assert await running == 0
        assert out.lines[-1] == "up            | stopped"


# A 200 KB line, bytes that are not text and would steer a terminal, a last line with no newline;
# then the child dies by a signal.
NOISY = """
import os, signal, sys
out = sys.stdout.buffer
out.write(b"long " + b"y" * 199_995 + b"\\n")
out.write(b"binary \\x00\\xff\\xfe \\x1b[2J\\x1b]0;owned\\x07 caf\\xc3\\xa9\\r\\n")
out.write(b"no newline at the end")
out.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


async def test_any_output_is_relayed_and_a_child_killed_by_a_signal_is_restarted() -> None:
    out = Terminal()
    async with supervising(Child("noisy", python(NOISY)), out=out):
        await out.line("noisy         | started (pid", count=2)
    long = out.having("| long ")[0]
    assert long.endswith(f"y … [line cut: 200,000 bytes, the first {LINE_LIMIT:,} shown]")
    assert len(long) < LINE_LIMIT + 100
    assert out.having("| binary")[0] == (
        r"noisy         | binary \x00\xff\xfe \x1b[2J\x1b]0;owned\x07 café"
    ), "not text and control characters are shown escaped; the CR of a CRLF is dropped"
    assert "noisy         | no newline at the end" in out.lines
    restarted = out.having("killed by SIGKILL")[0]
    assert restarted == "noisy         | killed by SIGKILL; restarting in 0.5 s (restart 1)"


async def test_a_child_that_cannot_start_is_logged_and_tried_again_with_backoff(tmp_path: Path) -> None:
    script = tmp_path / "late-tool"
    out = Terminal()
    async with supervising(Child("late", [str(script), "--flag"]), out=out):
        first = await out.line("could not start")
        assert first == (
            f"late          | could not start {script} --flag (FileNotFoundError: [Errno 2] No such "
            f"file or directory: '{script}'); restarting in 0.5 s (restart 1)"
        )
        assert (await out.line("could not start", count=2)).endswith("restarting in 1.0 s (restart 2)")
        # The executable appears (a deploy finished): the next try starts it.
        script.write_text(f"#!{sys.executable}\nprint('late but here')\n")
        script.chmod(0o755)
        await out.line("late          | late but here")
    assert out.having("started (pid")


async def test_restarts_wait_as_settings_bus_restart_backoff_says(settings: object) -> None:
    settings.BUS = {"RESTART_BACKOFF": {"base": 0.2, "cap": 0.4, "jitter": 0}}  # type: ignore[attr-defined]
    out = Terminal()
    async with supervising(Child("brief", python("pass")), out=out, restart=None):
        await out.line("exited with 0", count=3)
    assert [line.partition("; ")[2] for line in out.having("exited with 0")][:3] == [
        "restarting in 0.2 s (restart 1)",
        "restarting in 0.4 s (restart 2)",
        "restarting in 0.4 s (restart 3)",
    ]


async def test_a_watcher_that_fails_watches_its_child_again(caplog: pytest.LogCaptureFixture) -> None:
    class Hiccup(Terminal):
        """A terminal that fails once, on the line with "hiccup"."""

        failed = False

        def write(self, text: str) -> int:
            if "hiccup" in text and not self.failed:
                self.failed = True
                raise RuntimeError("terminal hiccup")
            return super().write(text)

    # The child says "hiccup" (a word kept out of its command line, which is shown too), then
    # waits for SIGUSR1 before it says more and exits.
    child = Child("steady", python(
        "import signal\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
        "print('hic' + 'cup', flush=True)\n"
        "signal.sigwait({signal.SIGUSR1})\n"
        "print('after the fault', flush=True)\n"
    ))  # fmt: skip
    out = Hiccup()
    with caplog.at_level(logging.ERROR, logger="bus.supervisor"):
        async with supervising(child, out=out):
            failed = await out.line("its watcher failed")
            assert failed == (
                "steady        | its watcher failed (RuntimeError: terminal hiccup); "
                "watching it again in 0.5 s"
            )
            assert child.process is not None
            os.kill(child.process.pid, signal.SIGUSR1)
            await out.line("steady        | after the fault")
            exited = await out.line("steady        | exited with 0; restarting in 1.0 s (restart 1)")
    before = out.lines[: out.lines.index(exited)]
    assert len([line for line in before if "started (pid" in line]) == 1, "watched again, not restarted"
    assert "Watching steady failed." in caplog.text and "RuntimeError: terminal hiccup" in caplog.text


async def test_output_that_cannot_be_written_is_dropped_and_the_children_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Gone(Terminal):
        """A terminal that was closed: every write fails (the lines are kept for the test)."""

        def write(self, text: str) -> int:
            super().write(text)
            raise BrokenPipeError(32, "Broken pipe")

    # 2 MB in 20,000 lines: far more than a pipe holds, so the child ends only if it is drained.
    chatty = Child("chatty", python("for n in range(20_000): print('line', n, 'x' * 90)"))
    out = Gone()
    with caplog.at_level(logging.WARNING, logger="bus.supervisor"):
        async with supervising(chatty, out=out):
            await out.line("chatty        | exited with 0; restarting in 0.5 s (restart 1)")
    assert "chatty        | line 19999 " + "x" * 90 in out.lines
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Cannot write")]
    assert failures == [
        "Cannot write the output of the processes (BrokenPipeError: [Errno 32] Broken pipe); it is dropped."
    ]


async def test_a_stop_ends_every_child_and_says_how() -> None:
    out = Terminal()
    sleeper = Child("sleeper", python("import time; print('up', flush=True); time.sleep(600)"))
    async with supervising(sleeper, out=out):
        await out.line("sleeper       | up")
    assert "sleeper       | stopped (killed by SIGTERM)" in out.lines


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b"a\nb", b"c\n"], ["a", "bc"]),
        (
            [b"x" * 10, b"x" * 10 + b"\nnext\n"],
            ["x" * 8 + " … [line cut: 20 bytes, the first 8 shown]", "next"],
        ),
        ([b"caf\xc3\xa9\xc3\xa9\xc3\xa9\n"], ["caféé … [line cut: 9 bytes, the first 7 shown]"]),
        ([b"tail", b" without newline"], ["tail wit … [line cut: 20 bytes, the first 8 shown]"]),
        ([b"dos\r\n", b""], ["dos"]),
        ([b""], []),
    ],
)
def test_lines_are_split_cut_at_a_character_and_flushed_at_the_end(
    chunks: list[bytes], lines: list[str]
) -> None:
    splitter = Lines(limit=8)
    assert [line for chunk in chunks for line in splitter.feed(chunk)] + splitter.end() == lines


@pytest.mark.parametrize(
    ("code", "said"),
    [(0, "exited with 0"), (3, "exited with 3"), (-9, "killed by SIGKILL"), (-15, "killed by SIGTERM")],
)
def test_endings_name_the_signal(code: int, said: str) -> None:
    assert ending(code) == said
