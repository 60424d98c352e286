"""Workers that follow the load (bus/autoscale.py): the rule, and `up --workers echo=1:3` under a
burst, with real processes on a real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import bus
from bus.autoscale import Bounds, Load, Policy
from bus.client import default_bus
from tests.conftest import ROOT, free_port, migrated, process_env
from tests.polling import apoll, poll

BUSY = Load(waiting=500, in_flight=64, slots=64)
IDLE = Load(waiting=0, in_flight=0, slots=64)


def looks(policy: Policy, loads: list[Load], running: int, start: float = 0.0) -> list[int]:
    """The policy's decisions for one look a second, applying each to `running`."""
    decisions = []
    for second, load in enumerate(loads):
        step = policy.decide(load, running, start + second)
        running += step
        decisions.append(step)
    return decisions


def test_bounds_are_a_count_or_a_range() -> None:
    assert Bounds.parse("3") == Bounds(3, 3)
    assert Bounds.parse("1:4") == Bounds(1, 4)
    for bad in ("0", "4:2", "1:", "x", "1:y", "-1"):
        with pytest.raises(ValueError):
            Bounds.parse(bad)


def test_it_grows_under_a_sustained_backlog_and_shrinks_after_a_long_quiet_within_its_bounds() -> None:
    policy = Policy(Bounds(1, 3))
    grown = looks(policy, [BUSY] * 20, running=1)
    assert grown[:3] == [0, 0, 1], "a backlog must last three looks"
    assert sum(grown) == 2, "never past MAX"
    shrunk = looks(policy, [IDLE] * 40, running=3, start=100)
    assert shrunk[:9] == [0] * 9 and sum(shrunk) == -2, "ten quiet looks per step, never under MIN"


def test_a_load_that_swings_around_the_thresholds_does_not_make_it_flap() -> None:
    half = Load(waiting=3, in_flight=40, slots=64)  # a little waits, workers half busy: neither
    swinging = [BUSY, half, BUSY, IDLE, half, IDLE] * 10
    assert looks(Policy(Bounds(1, 4)), swinging, running=2) == [0] * len(swinging)


def test_a_change_waits_out_the_cooldown() -> None:
    policy = Policy(Bounds(1, 4), up_after=1, cooldown=5.0)
    decisions = looks(policy, [BUSY] * 12, running=1)
    assert [second for second, step in enumerate(decisions) if step] == [0, 5, 10]


def start_up(log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`manage.py up` with echo between one and three workers, its output in `log`."""
    with log.open("w") as output:
        return subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "up",
                "--no-setup",
                "--port",
                str(free_port()),
                "--workers",
                "echo=1:3",
            ],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_up_adds_workers_for_a_burst_and_retires_them_when_it_is_over(
    tmp_path: Path, redis_layer: str
) -> None:
    data_dir = migrated(tmp_path / "data")
    log = tmp_path / "up.log"
    up = start_up(log, process_env(data_dir, BUS_TEST_REDIS_URL=redis_layer, PYTHONUNBUFFERED="1"))
    try:
        poll(
            lambda: "echo.1        | " in log.read_text() and "serving echo" in log.read_text(), what="echo.1"
        )
        for n in range(3000):
            await bus.asend("echo.sleep_sync", seconds=0.2, tag=f"b{n}")
        poll(lambda: "scaling echo to 2 worker(s)" in log.read_text(), what="a second worker", timeout=60)
        poll(lambda: "scaling echo to 1 worker(s)" in log.read_text(), what="back to one", timeout=120)
        poll(
            lambda: "echo.2        | stopped (exited with 0)" in log.read_text(),
            what="echo.2 to drain and exit",
        )
        assert "scaling echo to 0" not in log.read_text()
        await apoll(
            lambda: default_bus.layer.durable_depth("echo"),
            lambda depth: (depth.waiting, depth.held) == (0, 0),
            what="every message of the burst handled",
        )
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(60)
        await default_bus.aclose()
    print("\n" + "\n".join(line for line in log.read_text().splitlines() if "scaling" in line))
