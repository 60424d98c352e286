"""`manage.py up` as a real process, in both topologies: the same journey, then restarts and shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, RedisServer, UpProcess, process_env
from tests.polling import poll
from tests.site import DEMO_PASSWORDS, SAGA, Visitor, frames_until, order_states, wait_ready, whole_saga

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def checkout_over_http_and_websocket(visitor: Visitor, correlation: str = "") -> None:
    """Sign in, listen on the socket, place an order over HTTP, see it confirmed on the socket."""
    visitor.sign_in("ada")
    async with visitor.socket() as socket:
        await socket.send(json.dumps({"type": "resume", "cursor": None}))
        hello = json.loads(await socket.recv())
        assert hello["type"] == "hello" and hello["topics"] == ["stock", "orders:ada"]
        status, order = visitor.place([{"sku": "ANVIL-1", "quantity": 1}], correlation=correlation)
        assert status == 202 and order["state"] == "pending", order
        frames = await frames_until(socket, whole_saga())
    assert sorted(order_states(frames), key=SAGA.index) == list(SAGA), "each state once"
    status, page = visitor.request("GET", "/")
    assert status == 200 and "shop.js" in page


def test_one_process_without_redis(tmp_path: Path) -> None:
    up = UpProcess(tmp_path, None)
    try:
        ready = wait_ready(up.visitor)
        assert set(ready["domains"]) == {"inventory", "orders", "payments", "presentation"}
        assert "One process (in-memory layer)" in up.text()
        assert f"ada / {DEMO_PASSWORDS['ada']}" in up.text(), (
            "first start seeds demo data and prints the logins"
        )
        asyncio.run(checkout_over_http_and_websocket(up.visitor))
        assert up.stop() == 0
        assert "stopped after handling" in up.text(), "the in-process workers drained"
    finally:
        up.close()


def test_supervised_processes_with_redis(tmp_path: Path, private_redis: RedisServer) -> None:
    # DEBUG: a line per message, to follow a correlation id.
    up = UpProcess(tmp_path, private_redis.url, log_level="DEBUG")
    try:
        ready = wait_ready(up.visitor, orders=2)
        assert ready["domains"]["orders"] == 2, "a count per domain"
        asyncio.run(checkout_over_http_and_websocket(up.visitor, correlation="trace-4711"))
        # One user action, followed by its correlation id through the logs of every process.
        lines = [line for line in up.text().splitlines() if "[trace-4711 " in line]
        processes = {line.split("|")[0].strip().split(".")[0] for line in lines}
        assert processes >= {"web", "orders", "inventory", "payments", "presentation"}, lines
        # A worker dies: the supervisor says so and starts it again; the system is ready again.
        pid = int(re.findall(r"payments\s+\| started \(pid (\d+)\)", up.text())[-1])
        os.kill(pid, signal.SIGKILL)
        poll(up.text, lambda text: "payments      | killed by SIGKILL; restarting in" in text,
             what="the supervisor to restart payments")  # fmt: skip
        wait_ready(up.visitor)
        children = [int(pid) for pid in re.findall(r"started \(pid (\d+)\)", up.text())]
        assert up.stop() == 0
        assert "up            | stopped" in up.text()
        for child in children:
            with pytest.raises(ProcessLookupError):
                os.kill(child, 0)
    finally:
        up.close()


async def resume_after(visitor: Visitor, cursor: str) -> list[dict[str, Any]]:
    async with visitor.socket() as socket:
        await socket.send(json.dumps({"type": "resume", "cursor": cursor}))
        return await frames_until(socket, whole_saga())


def test_sockets_dropped_abruptly_or_by_a_daphne_restart_resume_without_losing_events(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    up = UpProcess(tmp_path, private_redis.url, log_level="DEBUG")
    try:
        wait_ready(up.visitor)
        up.visitor.sign_in("ada")

        async def drop_abruptly() -> str:
            """The connection dies with no close frame (a pulled cable): the client keeps its cursor."""
            async with up.visitor.socket() as socket:
                await socket.send(json.dumps({"type": "resume", "cursor": None}))
                cursor = str(json.loads(await socket.recv())["cursor"])
                socket.transport.abort()
            return cursor

        cursor = asyncio.run(drop_abruptly())
        status, order = up.visitor.place([{"sku": "TONGS-3", "quantity": 1}])
        assert status == 202
        frames = asyncio.run(resume_after(up.visitor, cursor))
        replayed = {f["data"]["order_id"] for f in frames if f.get("kind") == "orders.updated"}
        assert replayed == {order["order_id"]}, "the order placed while the socket was gone comes back"

        # daphne dies while an order goes through: the page's next socket replays what it missed.
        cursor = str(frames[-1]["cursor"])
        web = int(re.findall(r"web\s+\| started \(pid (\d+)\)", up.text())[-1])
        os.kill(web, signal.SIGKILL)
        placed = subprocess.run(
            [
                sys.executable,
                "manage.py",
                "bus",
                "call",
                "orders.place",
                json.dumps(
                    {
                        "customer_id": "ada",
                        "items": [{"sku": "HAMMER-4", "quantity": 1}],
                        "idempotency_key": "x",
                    }
                ),
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "REDIS_URL": private_redis.url,
                "DJANGO_DATA_DIR": str(tmp_path),
                "DJANGO_SETTINGS_MODULE": "project.settings",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert placed.returncode == 0, placed.stderr
        missed = json.loads(placed.stdout)["order_id"]
        wait_ready(up.visitor)  # the supervisor started a new daphne
        frames = asyncio.run(resume_after(up.visitor, cursor))
        assert {f["data"]["order_id"] for f in frames if f.get("kind") == "orders.updated"} == {missed}
        assert up.stop() == 0
    finally:
        up.close()


def test_help_shows_the_defaults_and_the_setup_commands_by_name(tmp_path: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "manage.py", "up", "--help"],
        cwd=ROOT,
        env=process_env(tmp_path, DJANGO_SETTINGS_MODULE="project.settings"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "address daphne listens on (default: 127.0.0.1)" in text
    assert "port daphne listens on (default: 8000)" in text
    assert "(default: one per domain)" in text
    assert "skip the setup commands (migrate_all, seed) that run first" in text
    assert "settings.BUS" not in text and "UP_COMMANDS" not in text
