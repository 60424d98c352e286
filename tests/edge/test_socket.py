"""/ws/ designed to die: resume by cursor, heartbeats, lifetime, slow consumers, hostile frames."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from bus import messages
from bus.conf import channel_layers as layers_for
from bus.threads import in_pool
from consumers import events
from tests.conftest import RedisServer
from tests.edge.conftest import ORDER_ITEMS, Browser, sign_in
from tests.site import SAGA, confirmed, order_states

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases="__all__")]


async def receive(socket: WebsocketCommunicator, timeout: float = 10) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await socket.receive_from(timeout))
    return message


async def until(socket: WebsocketCommunicator, predicate: Any, timeout: float = 20) -> list[dict[str, Any]]:
    """Frames up to and including the first that satisfies `predicate` (pings answered)."""
    seen = []
    while True:
        frame = await receive(socket, timeout)
        if frame["type"] == "ping":
            await socket.send_to(text_data=json.dumps({"type": "pong"}))
            continue
        seen.append(frame)
        if predicate(frame):
            return seen


async def past_events(socket: WebsocketCommunicator) -> dict[str, Any]:
    """The next output that is not a live event: the in_process_shop fixture's own stock changes may still
    be arriving (the outbox relays them as soon as they commit)."""
    while True:
        output: dict[str, Any] = await socket.receive_output(5)
        if output["type"] != "websocket.send" or json.loads(output["text"])["type"] != "event":
            return output


async def opened(browser: Browser, cursor: str | None = None) -> tuple[WebsocketCommunicator, dict[str, Any]]:
    socket = browser.socket()
    connected, _ = await socket.connect(timeout=10)
    assert connected
    await socket.send_to(text_data=json.dumps({"type": "resume", "cursor": cursor}))
    hello = await receive(socket)
    assert hello["type"] == "hello"
    return socket, hello


async def test_a_foreign_or_missing_origin_is_refused() -> None:
    for origin in [(b"origin", b"http://evil.example"), None]:
        socket = Browser().socket(origin=origin)
        connected, _ = await socket.connect(timeout=10)
        assert not connected
        await socket.disconnect()


async def test_anonymous_pages_follow_stock_only_and_signed_in_ones_their_orders(
    in_process_shop: None,
) -> None:
    anonymous, hello = await opened(Browser())
    assert hello["topics"] == ["stock"]
    ada = await sign_in("ada")
    socket, hello = await opened(ada)
    assert hello["topics"] == ["stock", "orders:ada"]
    await ada.post_json("/api/orders", ORDER_ITEMS, key="k")
    live = await until(socket, confirmed)
    cursors = [int(f["cursor"].split(":")[1]) for f in live if f["type"] == "event"]
    assert len(set(cursors)) == len(cursors), "each event once"
    # Live pushes may cross on the way (test_a_push_overtaken_by_a_later_one_still_reaches_the_page):
    # in log order they are the whole saga, and a page resuming from its first cursor gets the same.
    in_log_order = sorted(live, key=lambda f: int(f["cursor"].split(":")[1]) if "cursor" in f else -1)
    assert order_states(in_log_order) == list(SAGA)
    resumed, _ = await opened(ada, cursor=hello["cursor"])
    replayed = await until(resumed, confirmed)
    assert {frame["kind"] for frame in replayed} == {"orders.updated", "inventory.stock_changed"}
    assert order_states(replayed) == list(SAGA)
    stock = await until(anonymous, lambda f: f["type"] == "event")
    assert stock[-1]["kind"] == "inventory.stock_changed", "anonymous pages see stock, never orders"
    for page in (socket, resumed, anonymous):
        await page.disconnect()


async def test_a_push_overtaken_by_a_later_one_still_reaches_the_page() -> None:
    """The presentation worker handles events in concurrent threads: one appended to the log as
    offset n may be pushed after the one appended as n + 1 (an order's `charged` and the stock
    change of its commit, say). A page following both topics must still get offset n."""
    ada = await sign_in("ada")
    socket, _ = await opened(ada)
    order = await in_pool(
        events.append, messages.new_id(), events.orders_topic("ada"), "orders.updated", {"state": "charged"}
    )
    stock = await in_pool(events.append, messages.new_id(), events.STOCK, "inventory.stock_changed", {})
    layer = get_channel_layer()
    for entry in (stock, order):  # the later push first, as the presentation threads may send them
        await layer.group_send(events.group_for(entry.topic), {**entry.as_message(), "type": "log.event"})
    frames = await until(socket, lambda frame: frame.get("cursor") == order.cursor, timeout=5)
    assert [frame["cursor"] for frame in frames] == [stock.cursor, order.cursor]
    await socket.disconnect()


async def test_resuming_after_a_gap_replays_what_was_missed_once_and_in_order(in_process_shop: None) -> None:
    ada = await sign_in("ada")
    socket, hello = await opened(ada)
    await socket.disconnect()  # the page goes away; events happen meanwhile
    await ada.post_json("/api/orders", ORDER_ITEMS, key="k")
    first_life, _ = await opened(ada)  # a witness that sees the events live
    await until(first_life, confirmed)
    await first_life.disconnect()
    socket, _ = await opened(ada, cursor=hello["cursor"])
    replayed = await until(socket, confirmed)
    states = [f["data"]["state"] for f in replayed if f["type"] == "event" and f["kind"] == "orders.updated"]
    assert states == ["pending", "reserved", "charged", "confirmed"], "missed events come back, once each"
    await socket.disconnect()


async def test_a_cursor_that_cannot_be_resumed_gets_reload(in_process_shop: None) -> None:
    socket, _ = await opened(Browser(), cursor="0ldepoch:12")
    reload = await receive(socket)
    assert reload["type"] == "reload" and "is not from this log" in reload["reason"]
    assert reload["cursor"].count(":") == 1
    await socket.disconnect()


async def test_a_silent_client_is_closed_by_the_heartbeat(in_process_shop: None, settings: object) -> None:
    settings.EDGE_WEBSOCKET = {"HEARTBEAT": 0.2}  # type: ignore[attr-defined]
    socket, hello = await opened(Browser())
    assert hello["heartbeat"] == 0.2
    ping = await past_events(socket)
    assert json.loads(ping["text"])["type"] == "ping"
    assert await past_events(socket) == {
        "type": "websocket.close",
        "code": 4001,
        "reason": "heartbeat missed",
    }


async def test_sockets_are_closed_with_the_reconnect_code_when_their_lifetime_ends(
    in_process_shop: None, settings: object
) -> None:
    settings.EDGE_WEBSOCKET = {"LIFETIME": 0.3}  # type: ignore[attr-defined]
    socket, _ = await opened(Browser())
    closed = await past_events(socket)
    assert closed["type"] == "websocket.close" and closed["code"] == 4000


async def test_a_client_that_does_not_acknowledge_is_closed_as_too_slow(
    in_process_shop: None, settings: object
) -> None:
    settings.EDGE_WEBSOCKET = {"MAX_UNACKED": 2}  # type: ignore[attr-defined]
    ada = await sign_in("ada")
    socket, _ = await opened(ada)
    await ada.post_json("/api/orders", ORDER_ITEMS, key="k")
    frames = []
    while True:
        output = await socket.receive_output(20)
        if output["type"] == "websocket.close":
            assert output["code"] == 4002
            break
        frames.append(json.loads(output["text"]))
    assert len([f for f in frames if f["type"] == "event"]) == 2, "the backlog never grew past the limit"


async def test_acknowledged_events_keep_a_slow_limit_from_closing_the_socket(
    in_process_shop: None, settings: object
) -> None:
    # Below the 6 events of a checkout (4 orders.updated, 2 stock_changed), above the 3 that may
    # be sent at once before the first acknowledgement is read: acknowledging keeps it open.
    settings.EDGE_WEBSOCKET = {"MAX_UNACKED": 4}  # type: ignore[attr-defined]
    ada = await sign_in("ada")
    socket, _ = await opened(ada)
    await ada.post_json("/api/orders", ORDER_ITEMS, key="k")
    acknowledged = 0
    while True:
        frame = await receive(socket, 20)
        if frame["type"] == "event":
            await socket.send_to(text_data=json.dumps({"type": "ack", "cursor": frame["cursor"]}))
            acknowledged += 1
            if confirmed(frame):
                break
    assert acknowledged > 2, "more events than MAX_UNACKED went through, each acknowledged"
    # Still open: a frame it cannot use gets an error frame, not the 4002 close of a slow client.
    await socket.send_to(text_data=json.dumps({"type": "subscribe-everything"}))
    answer = await past_events(socket)
    assert answer["type"] == "websocket.send" and json.loads(answer["text"])["type"] == "error", answer
    await socket.disconnect()


async def test_hostile_frames_get_an_error_or_a_policy_close(in_process_shop: None, settings: object) -> None:
    socket, _ = await opened(Browser())

    async def answer() -> dict[str, Any]:
        frame: dict[str, Any] = json.loads((await past_events(socket))["text"])
        return frame

    await socket.send_to(text_data="{not json")
    assert "Frames are JSON objects" in (await answer())["message"]
    await socket.send_to(text_data=json.dumps({"type": "subscribe-everything"}))
    assert "Unknown or repeated frame type 'subscribe-everything'" in (await answer())["message"]
    await socket.send_to(bytes_data=b"\xff\xfe binary")
    assert (await answer())["type"] == "error"
    await socket.send_to(text_data="x" * 5000)
    assert await past_events(socket) == {
        "type": "websocket.close",
        "code": 4008,
        "reason": "frames too large or too frequent",
    }
    settings.EDGE_WEBSOCKET = {"BURST": 5, "RATE": 1}  # type: ignore[attr-defined]
    flooding, _ = await opened(Browser())
    for _ in range(10):
        await flooding.send_to(text_data=json.dumps({"type": "pong"}))
    closed = await past_events(flooding)
    assert closed["type"] == "websocket.close" and closed["code"] == 4008


@pytest.mark.redis
async def test_losing_the_channel_layer_closes_the_socket_so_the_page_resumes(
    private_redis: RedisServer, settings: object
) -> None:
    settings.CHANNEL_LAYERS = layers_for(private_redis.url)  # type: ignore[attr-defined]
    socket, _ = await opened(Browser())
    private_redis.stop()
    # Live events may be lost with the server: the page hears so and resumes from its cursor,
    # instead of a socket that stays open and silent (or a consumer that dies with a traceback).
    closed = await past_events(socket)
    assert closed == {
        "type": "websocket.close",
        "code": 4003,
        "reason": "events interrupted: reconnect and resume",
    }


async def closed_and_then_silent(socket: WebsocketCommunicator, code: int) -> dict[str, Any]:
    """The close the server sends, after which it sends nothing (and did not crash: `disconnect`
    re-raises what the consumer died of). Live events the in_process_shop fixture still relays are skipped."""
    closed = await past_events(socket)
    assert closed["type"] == "websocket.close" and closed["code"] == code, closed
    await socket.disconnect()  # after every frame the test sent: the consumer has handled them all
    after = []
    while not socket.output_queue.empty():
        after.append(socket.output_queue.get_nowait())
    assert after == [], "sent after the close (daphne: 'Attempt to send on a closed protocol')"
    return closed


@pytest.mark.redis
async def test_a_resume_while_redis_is_down_closes_with_4003_not_a_crash(
    private_redis: RedisServer, settings: object
) -> None:
    settings.CHANNEL_LAYERS = layers_for(private_redis.url)  # type: ignore[attr-defined]
    socket = Browser().socket()
    connected, _ = await socket.connect(timeout=10)
    assert connected
    private_redis.stop()
    # A page that reconnects while Redis is down sends its resume at once: joining the topics'
    # groups fails, and the page must hear "resume later", as when Redis goes while it is open.
    await socket.send_to(text_data=json.dumps({"type": "resume", "cursor": None}))
    closed = await closed_and_then_silent(socket, 4003)
    assert closed["reason"] == "events interrupted: reconnect and resume"


async def test_frames_after_a_policy_close_are_ignored(in_process_shop: None) -> None:
    socket, _ = await opened(Browser())
    await socket.send_to(text_data="x" * 5000)
    # Already on their way when the server closed: nothing may answer them (in daphne, a send
    # after the close raised "Attempt to send on a closed protocol" with a traceback).
    await socket.send_to(text_data="{not json")
    await socket.send_to(text_data=json.dumps({"type": "subscribe-everything"}))
    await closed_and_then_silent(socket, 4008)


async def test_acknowledgements_do_not_count_against_the_frame_rate(
    in_process_shop: None, settings: object
) -> None:
    # Two frames at once and hardly any more: a page acknowledging each of an order's events
    # (four order updates and the stock changes) would be cut off if acks took tokens.
    settings.EDGE_WEBSOCKET = {"BURST": 2, "RATE": 0.001}  # type: ignore[attr-defined]
    ada = await sign_in("ada")
    socket, _ = await opened(ada)
    await ada.post_json("/api/orders", ORDER_ITEMS, key="k")
    acked = 0
    while True:
        frame = await receive(socket, 20)
        assert frame["type"] == "event", frame
        await socket.send_to(text_data=json.dumps({"type": "ack", "cursor": frame["cursor"]}))
        acked += 1
        if confirmed(frame):
            break
    assert acked > 2
    # An ack of nothing new is an ordinary frame: it takes a token like any other.
    for _ in range(3):
        await socket.send_to(text_data=json.dumps({"type": "ack", "cursor": frame["cursor"]}))
    await closed_and_then_silent(socket, 4008)
