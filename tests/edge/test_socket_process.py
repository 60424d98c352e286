"""/ws/ in a real daphne, from a raw socket: unlucky and hostile clients leave no traceback in its log.

The raw client never answers the server's close, so the server is still closing while it handles
the frames sent before. A consumer that dies of one never runs its `disconnect`, so daphne's
`bus_websockets_open` gauge (/metrics) stays up; daphne logs the traceback a moment later. So the
test waits for the gauge to come down, and then reads the log.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import RedisServer, process_env
from tests.edge.servers import Daphne, RawSocket, close_frame
from tests.polling import poll

pytestmark = [pytest.mark.timeout(90)]


@pytest.fixture
def daphne(tmp_path: Path, worker_data_dir: Path) -> Iterator[Callable[..., Daphne]]:
    """Start daphne on the migrated test databases; `env` picks its layer (BUS_TEST_REDIS_URL)."""
    started: list[Daphne] = []

    def start(**env: str) -> Daphne:
        web = Daphne(process_env(worker_data_dir, PYTHONUNBUFFERED="1", **env), tmp_path)
        started.append(web)
        web.start()
        return web

    yield start
    for web in started:
        web.stop()


def open_sockets(web: Daphne) -> float:
    with urllib.request.urlopen(web.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    line = next(line for line in text.splitlines() if line.startswith("bus_websockets_open "))
    return float(line.split()[1])


def assert_no_traceback(web: Daphne) -> None:
    poll(
        lambda: open_sockets(web),
        lambda count: count == 0,
        what="the consumer to finish through its disconnect",
    )
    log = web.log()
    assert "Traceback" not in log and "Exception inside application" not in log, log


def test_frames_sent_after_a_policy_close_leave_no_traceback(daphne: Callable[..., Daphne]) -> None:
    web = daphne()
    client = RawSocket(web.url)
    client.send("x" * 5000)  # over MAX_FRAME: closed with 4008
    for _ in range(3):
        client.send("{not json")  # handled while the server is closing: no answer may be sent
    assert client.frames_until_dropped() == [close_frame(4008)]
    assert_no_traceback(web)


@pytest.mark.redis
def test_a_resume_while_redis_is_down_gets_4003_and_leaves_no_traceback(
    daphne: Callable[..., Daphne], private_redis: RedisServer
) -> None:
    web = daphne(BUS_TEST_REDIS_URL=private_redis.url)
    client = RawSocket(web.url)
    private_redis.stop()
    client.send(json.dumps({"type": "resume", "cursor": None}))
    frames = client.frames_until_dropped()
    assert frames[-1] == close_frame(4003), frames
    assert_no_traceback(web)
