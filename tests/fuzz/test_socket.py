"""Random frames at /ws/: the socket answers with error frames or a 4008 close, and never crashes.

A consumer that raises shows up in the communicator: `receive_output` re-raises the exception the
application died of, so every frame's output is read back before the next is sent.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from hypothesis import given
from hypothesis import strategies as st

from tests.edge.conftest import Browser
from tests.fuzz.conftest import fuzz_settings

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases="__all__")]

FUZZ_SETTINGS = fuzz_settings(40)
MAX_FRAME = 4096  # EDGE_WEBSOCKET["MAX_FRAME"]: bytes in one client frame
BURST = 30  # frames at once before the rate limit closes the socket
SERVER_TYPES = {"hello", "event", "reload", "ping", "error"}
POLICY = 4008

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
cursors = st.one_of(
    json_values,
    st.text(max_size=30),
    st.sampled_from(["", ":", "0", "x:1", "x:-1", "x:²", "x:" + "9" * 30, "EPOCH:", "EPOCH:0", "EPOCH:1"]),
    st.sampled_from(["EPOCH:²", "EPOCH:" + "9" * 30, "EPOCH:-1", "EPOCH:1e3", "EPOCH:00"]),
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["resume", "ack", "pong", "ping", "hello", "", "RESUME"]) | json_values},
    optional={"cursor": cursors, "extra": json_values},
)
text_frames = st.one_of(
    messages.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.sampled_from(
        [
            "",
            "{",
            "null",
            "NaN",
            '{"type": NaN}',
            '{"type": {}}',
            '{"type": []}',
            "[" * 2_000 + "]" * 2_000,
            '{"type": "ack", "cursor": ' + "[" * 1_500 + "]" * 1_500 + "}",
            "x" * MAX_FRAME,
            "x" * (MAX_FRAME + 1),
            "é" * 1_000,
            "é" * 3_000,  # within MAX_FRAME in characters, over it in bytes
        ]
    ),
)
byte_frames = st.one_of(
    st.binary(max_size=300), text_frames.map(lambda text: text.encode("utf-8", "surrogatepass"))
)
frames = st.one_of(
    text_frames.map(lambda text: ("text", text)),
    byte_frames.map(lambda data: ("bytes", data)),
)


async def epoch() -> str:
    cursor: str = (await Browser().get("/api/events")).json()["cursor"]
    return cursor.partition(":")[0]


def with_epoch(frame: tuple[str, Any], name: str) -> tuple[str, Any]:
    kind, data = frame
    if kind == "text":
        return kind, data.replace("EPOCH", name)
    return kind, data.replace(b"EPOCH", name.encode())


def size(frame: tuple[str, Any]) -> int:
    kind, data = frame
    return len(data.encode("utf-8", "surrogatepass")) if kind == "text" else len(data)


async def outputs(socket: WebsocketCommunicator) -> list[dict[str, Any]]:
    """What the server sent since the last look; raises what the application died of, if it did."""
    seen = []
    while not await socket.receive_nothing(timeout=0.05, interval=0.005):
        seen.append(await socket.receive_output(timeout=1))
    return seen


def check_output(output: dict[str, Any], frame: tuple[str, Any]) -> bool:
    """One thing the server sent; True when it closed the socket."""
    if output["type"] == "websocket.close":
        assert output.get("code") == POLICY, (output, frame)
        return True
    assert output["type"] == "websocket.send", output
    message = json.loads(output["text"])
    assert message["type"] in SERVER_TYPES, (message, frame)
    if message["type"] == "error":
        assert isinstance(message.get("message"), str) and message["message"], message
    return False


async def send(socket: WebsocketCommunicator, frame: tuple[str, Any]) -> None:
    kind, data = frame  # send_input, not send_to: that one refuses an empty frame
    await socket.send_input({"type": "websocket.receive", kind: data})


async def still_says_hello() -> None:
    socket = Browser().socket()
    connected, _ = await socket.connect(timeout=10)
    assert connected
    await socket.send_to(text_data=json.dumps({"type": "resume", "cursor": None}))
    hello = json.loads(await socket.receive_from(timeout=10))
    assert hello["type"] == "hello", hello
    await socket.disconnect()


async def play(batch: list[tuple[str, Any]]) -> None:
    """Send `batch` one frame at a time, checking what comes back after each."""
    name = await epoch()
    socket = Browser().socket()
    connected, _ = await socket.connect(timeout=10)
    assert connected
    try:
        for frame in (with_epoch(frame, name) for frame in batch):
            await send(socket, frame)
            closed = False
            for output in await outputs(socket):
                closed = check_output(output, frame) or closed
            if size(frame) > MAX_FRAME:
                assert closed, f"a frame of {size(frame)} bytes, over {MAX_FRAME}, was let through"
            if closed:
                assert size(frame) > MAX_FRAME, f"a {size(frame)}-byte frame, within every limit, closed it"
                break
    finally:
        await socket.disconnect()


@FUZZ_SETTINGS
@given(batch=st.lists(frames, min_size=1, max_size=12))
async def test_random_frames_get_errors_or_a_policy_close_never_a_crash(
    in_process_shop: None, batch: list[tuple[str, Any]]
) -> None:
    await play(batch)
    await still_says_hello()


@pytest.mark.parametrize(
    "frame",
    [
        ("text", '{"type": "ack", "cursor": "x:²"}'),
        ("text", '{"type": "resume", "cursor": "EPOCH:²"}'),
        ("text", '{"type": "resume", "cursor": "EPOCH:' + "9" * 30 + '"}'),
        ("text", "[" * 2_000 + "]" * 2_000),
        ("text", "é" * 3_000),
        ("bytes", b"\xff" * 2_000),
    ],
    ids=[
        "ack-superscript-offset",
        "resume-superscript",
        "resume-huge-offset",
        "deep-json",
        "multibyte",
        "bad-utf8",
    ],
)
async def test_named_hostile_frames(in_process_shop: None, frame: tuple[str, Any]) -> None:
    """Frames that once broke the socket, each tried on its own: a cursor offset of non-ASCII digits
    killed the consumer, so did JSON nested too deep; the frame limit counted characters, not bytes."""
    await play([frame])
    await still_says_hello()


async def test_a_rapid_burst_is_closed_with_4008(in_process_shop: None) -> None:
    socket = Browser().socket()
    connected, _ = await socket.connect(timeout=10)
    assert connected
    for _ in range(BURST + 10):
        await socket.send_to(text_data='{"type": "pong"}')
    seen = await outputs(socket)
    assert seen and seen[-1]["type"] == "websocket.close" and seen[-1]["code"] == POLICY, seen
    await socket.disconnect()
    await still_says_hello()
