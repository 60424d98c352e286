"""Random and malformed envelopes straight onto the channel layer, at an in-process worker.

The oracle here is the README and the wire format, not the worker's own code: a message whose
`reply_to` and `id` are strings gets exactly one reply; a well-formed request gets an answer that
is ok exactly when its target and body are valid; nothing rejected changes any state; and the
worker is still serving afterwards.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from channels.layers import get_channel_layer
from hypothesis import given
from hypothesis import strategies as st

import bus
from bus.testing import serving
from tests.fuzz.conftest import fuzz_settings
from tests.polling import apoll
from workers.inventory.contract import Inventory

pytestmark = [pytest.mark.db, pytest.mark.django_db(transaction=True, databases="__all__")]

# No shrinking: a missing reply costs a timeout per try; the failing batch is in the message.
FUZZ_SETTINGS = fuzz_settings(20, shrink=False)

ENVELOPE_TYPES = ("bus.request", "bus.command", "bus.event")
# The wire format (bus/messages.py `Envelope`): each field and the JSON types it may have.
FIELDS: dict[str, Callable[[Any], bool]] = {
    "id": lambda v: isinstance(v, str),
    "correlation_id": lambda v: isinstance(v, str),
    "target": lambda v: isinstance(v, str),
    "body": lambda v: isinstance(v, dict),
    "deadline": lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool)),
    "reply_to": lambda v: v is None or isinstance(v, str),
    "sent_at": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "headers": lambda v: isinstance(v, dict),
}
ERROR_KINDS = {"bad_message", "validation", "unknown", "unavailable", "deadline", "remote", "contract"}
HUGE = 200_000  # characters in the largest strings sent (the in-memory layer does not encode)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.binary(max_size=16)
    | st.sampled_from(["", "x" * HUGE, "é" * 5_000, "\x00", "\ud7ff", "\ud800", "2", "1e3", "NaN", "true"])
)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)
deadlines = st.one_of(
    st.none(),
    st.sampled_from([math.nan, math.inf, -math.inf, 0, 0.0, -1.0, 1e308, "soon", True, []]),
    st.floats(min_value=-1e6, max_value=-1).map(lambda back: ("past", back)),
    st.floats(min_value=5, max_value=1e6).map(lambda ahead: ("future", ahead)),
    junk,
)


traces = st.dictionaries(
    st.sampled_from(["traceparent", "tracestate", "baggage"]) | st.text(max_size=8),
    st.text(max_size=60) | st.just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") | junk,
    max_size=3,
)


def well_formed(message: Any) -> bool:
    """Whether `message` follows the wire format, judged from the README and the Envelope fields."""
    if not isinstance(message, dict) or message.get("type") not in ENVELOPE_TYPES:
        return False
    return all(field in message and check(message[field]) for field, check in FIELDS.items())


def wrong_fields(message: dict[str, Any]) -> list[str]:
    problems = [f for f, check in FIELDS.items() if f not in message or not check(message[f])]
    if message.get("type") not in ENVELOPE_TYPES:
        problems.append("type")
    return problems


def expired(deadline: Any) -> bool:
    return isinstance(deadline, int | float) and not math.isnan(deadline) and deadline < time.time()


@st.composite
def envelopes(draw: st.DrawFn, targets: list[str], bodies: st.SearchStrategy[Any]) -> dict[str, Any]:
    """An envelope that starts well-formed and is then bent: fields dropped, retyped, added."""
    deadline = draw(deadlines)
    if isinstance(deadline, tuple) and len(deadline) == 2 and deadline[0] in ("past", "future"):
        deadline = time.time() + deadline[1]
    message: dict[str, Any] = {
        "type": draw(st.sampled_from(ENVELOPE_TYPES) | st.sampled_from(["bus.reply", "", "bus.REQUEST"])),
        "id": uuid.uuid4().hex + draw(st.text(max_size=20)),
        "correlation_id": draw(st.text(max_size=40)),
        "target": draw(st.sampled_from(targets) | st.text(max_size=40)),
        "body": draw(bodies),
        "deadline": deadline,
        "reply_to": None,  # set by the caller of this strategy
        "sent_at": draw(st.floats(allow_nan=True) | st.just(time.time())),
        "headers": draw(
            st.fixed_dictionaries(
                {},
                optional={"pins": junk, "trace": junk | traces, "attempt": junk, "extra": junk},
            )
        ),
    }
    for field in draw(st.lists(st.sampled_from([*FIELDS, "type"]), max_size=3, unique=True)):
        if field == "reply_to":
            continue
        if draw(st.booleans()):
            del message[field]
        else:
            message[field] = draw(junk)
    for name, value in draw(st.dictionaries(st.text(max_size=12), junk, max_size=3)).items():
        if name not in message:
            message[name] = value
    return message


def to_send(reply_channel: str, targets: list[str], bodies: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A message to put on the domain's channel: bent envelopes, plain junk, or non-dicts."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        kind = draw(st.sampled_from(["envelope", "envelope", "envelope", "dict", "other"]))
        if kind == "other":
            return draw(junk.filter(lambda value: not isinstance(value, dict)))
        if kind == "dict":
            message = draw(st.dictionaries(st.text(max_size=12), junk, max_size=6))
        else:
            message = draw(envelopes(targets, bodies))
        reply_to = draw(st.sampled_from(["ours", "ours", "ours", "none", "junk"]))
        id_kind = draw(st.sampled_from(["keep", "fresh", "junk"]))
        if reply_to == "ours":
            message["reply_to"] = reply_channel
        elif reply_to == "junk":
            message["reply_to"] = draw(junk)
        else:
            message.pop("reply_to", None) if draw(st.booleans()) else message.update(reply_to=None)
        if id_kind == "fresh" or (id_kind == "keep" and "id" not in message):
            message["id"] = uuid.uuid4().hex
        elif id_kind == "junk":
            message["id"] = draw(junk)
        return message

    return build()


def expects_reply(message: Any, reply_channel: str) -> bool:
    """Whether the README promises an answer on our channel."""
    if not isinstance(message, dict) or message.get("reply_to") != reply_channel:
        return False
    if not isinstance(message.get("id"), str):
        return False
    if not well_formed(message):
        return True  # a malformed message that names a reply channel is answered
    if message["type"] == "bus.command":
        return False  # fire and forget: failures are logged
    return not expired(message["deadline"])  # a request past its deadline is dropped unrun


async def collect(layer: Any, channel: str, wanted: set[str], timeout: float) -> list[dict[str, Any]]:
    """Replies on `channel` until every id in `wanted` is answered, then whatever else comes soon."""
    replies: list[dict[str, Any]] = []
    stop = time.monotonic() + timeout
    while True:
        answered = {r.get("in_reply_to") for r in replies}
        left = stop - time.monotonic() if wanted - answered else 0.3
        if left <= 0:
            return replies
        try:
            replies.append(await asyncio.wait_for(layer.receive(channel), left))
        except TimeoutError:
            return replies


def assert_named(reply: dict[str, Any], message: dict[str, Any]) -> None:
    """A bad_message error names the fields that are wrong."""
    error = reply["error"]
    assert isinstance(error, dict) and error["kind"] in ERROR_KINDS, reply
    assert isinstance(error["message"], str) and error["message"].strip(), reply
    if error["kind"] == "bad_message" and not well_formed(message):
        for field in wrong_fields(message):
            assert f"'{field}'" in error["message"], (field, reply)


async def run_batch(
    channel: str,
    batch: list[Any],
    reply_channel: str,
    oracle: Callable[[dict[str, Any]], bool | None],
) -> list[dict[str, Any]]:
    """Send `batch`, then check the replies against what the README promises for each message."""
    layer = get_channel_layer()
    expected: dict[str, Any] = {}
    for message in batch:
        try:
            await layer.send(channel, message)
        except AssertionError:
            assert not isinstance(message, dict), "the layer refuses only non-dicts"
            continue
        if expects_reply(message, reply_channel):
            assert message["id"] not in expected, "ids are unique in a batch"
            expected[message["id"]] = message
    replies = await collect(layer, reply_channel, set(expected), timeout=3)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for reply in replies:
        by_id.setdefault(reply["in_reply_to"], []).append(reply)
    missing = [expected[i] for i in expected if i not in by_id]
    assert not missing, f"no reply to {missing[0]!r:.600}"
    unexpected = [i for i in by_id if i not in expected]
    assert not unexpected, f"replies nobody was promised: {[by_id[i] for i in unexpected]!r:.600}"
    for message_id, answers in by_id.items():
        assert len(answers) == 1, f"{len(answers)} replies to one message: {answers!r:.600}"
        reply, message = answers[0], expected[message_id]
        assert reply["type"] == "bus.reply" and isinstance(reply["ok"], bool), reply
        valid = oracle(message) if well_formed(message) and message["type"] == "bus.request" else False
        if valid is None:
            continue  # the oracle cannot tell (a value JSON has no word for, say)
        if not well_formed(message) or message["type"] == "bus.event":
            assert reply["ok"] is False, f"{message!r:.400} -> {reply!r:.400}"
        elif valid:
            assert reply["ok"] is True, f"valid {message!r:.400} -> {reply!r:.600}"
        else:
            assert reply["ok"] is False, f"invalid {message!r:.400} -> {reply!r:.400}"
        if not reply["ok"]:
            assert_named(reply, message)
    return replies


# -- echo -------------------------------------------------------------------------------------------

ECHO_TARGETS = [
    "echo.echo",
    "echo.add",
    "echo.refuse",
    "echo.fail",
    "echo.nope",
    "nowhere.x",
    "inventory.stock",
]


def plain_json(value: Any) -> bool:
    """No bytes, tuples, non-str keys or non-finite floats: values whose JSON meaning is clear."""
    if isinstance(value, bytes | tuple):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(plain_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_json(v) for k, v in value.items())
    return True


def strict_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def wire_int(value: Any) -> bool:
    """An int msgpack (channels-redis's codec) can carry, with room for echo.add's +1."""
    return strict_int(value) and -(2**63) <= value < 2**63 - 1


def echo_oracle(message: dict[str, Any]) -> bool | None:
    """Would the echo domain accept this request (ok True)? None when JSON cannot say."""
    target, body = message["target"], message["body"]
    if not plain_json(body):
        return None
    if target == "echo.echo":
        return set(body) == {"text"} and isinstance(body["text"], str)
    if target == "echo.add":
        if any(strict_int(v) and not wire_int(v) for v in body.values()):
            return None  # valid by the contract, but the wire cannot carry it (see the report)
        return (
            "a" in body and set(body) <= {"a", "b"} and strict_int(body["a"]) and strict_int(body.get("b", 1))
        )
    return False  # echo.refuse and echo.fail always fail; the rest do not exist here


echo_bodies = st.one_of(
    junk,
    st.fixed_dictionaries({"text": st.text(max_size=50) | junk}),
    st.fixed_dictionaries({"a": junk | st.integers()}, optional={"b": st.integers() | junk}),
    st.fixed_dictionaries({"reason": st.text(max_size=20)}),
    st.fixed_dictionaries({"message": st.text(max_size=20)}),
    st.dictionaries(st.text(max_size=8) | st.integers(), junk, max_size=5),
)


def fixed_echo_cases(reply_channel: str) -> list[dict[str, Any]]:
    def request(name: str, arguments: Any, /, **changes: Any) -> dict[str, Any]:
        message = bus.messages.envelope(
            "bus.request", name, arguments, reply_to=reply_channel, deadline=time.time() + 30
        )
        return {**message, **changes}

    return [
        request("echo.echo", {"text": "fine"}),
        request("echo.echo", {"text": "fine"}, deadline=math.nan),
        request("echo.echo", {"text": "fine"}, deadline=math.inf),
        request("echo.echo", {"text": "x" * HUGE}),
        request("echo.echo", {"text": 5}),
        request("echo.echo", {1: "x", "text": "y"}),
        request("echo.echo", {"text": "y"}, headers={"pins": "junk", "trace": 5, "attempt": "x"}),
        request("echo.add", {"a": 2**70}),
        request("echo.add", {"a": True}),
        request("echo.add", {"a": 1.0}),
        request("echo.add", {"a": math.nan}),
        request("echo.nope", {}),
        request("inventory.stock", {"sku": "A-1"}),
        request("echo.echo", {"text": "y"}, type="bus.reply"),
        request("echo.echo", {"text": "y"}, body=[1, 2]),
        request("echo.echo", {"text": "y"}, sent_at=True),
        request("echo.echo", {"text": "y"}, headers=None, correlation_id=None, target=None),
        {"type": "bus.request", "id": uuid.uuid4().hex, "reply_to": reply_channel},
        {"id": uuid.uuid4().hex, "reply_to": reply_channel, "type": ["bus.request"]},
        {"id": uuid.uuid4().hex, "reply_to": reply_channel, "type": {"a": 1}},
        request("echo.echo", {"text": "y"}, headers={"trace": {"traceparent": 5}}),
        request("echo.echo", {"text": "y"}, headers={"trace": {"baggage": 5}}),
        request("echo.echo", {"text": "y"}, type=""),
        {"id": uuid.uuid4().hex, "reply_to": reply_channel, "target": "echo.echo", "body": {"text": "y"}},
    ]


@FUZZ_SETTINGS
@given(data=st.data())
async def test_junk_envelopes_at_echo_are_answered_once_and_the_worker_goes_on(data: Any) -> None:
    reply_channel = f"fuzz.reply.{uuid.uuid4().hex}"
    batch = data.draw(st.lists(to_send(reply_channel, ECHO_TARGETS, echo_bodies), max_size=15))
    async with serving("echo"):
        await run_batch("echo", batch, reply_channel, echo_oracle)
        assert await bus.acall("echo.echo", text="ok") == "ok"


@pytest.mark.parametrize("case", range(len(fixed_echo_cases("x"))))
async def test_named_junk_at_echo(case: int) -> None:
    """The cases the brief names, one by one, so a failure says which; among them the inputs of bugs
    that were fixed (a falsy 'type' went unanswered, a headers.trace that is not a dict of strings
    killed the consumer)."""
    reply_channel = f"fuzz.reply.{uuid.uuid4().hex}"
    async with serving("echo"):
        await run_batch("echo", [fixed_echo_cases(reply_channel)[case]], reply_channel, echo_oracle)
        assert await bus.acall("echo.echo", text="ok") == "ok"


# -- inventory ----------------------------------------------------------------------------------------

SKU = "FUZZ-1"
SKU_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")  # the contract's Sku, as the README shows it


def stock_is_invalid(draw: st.DrawFn, target: str) -> dict[str, Any]:
    """A body for `target` that breaks the inventory contract in at least one field, surely."""
    good: dict[str, Any] = {"sku": SKU, "quantity": 1}
    if target == "inventory.reserve":
        good["order_id"] = f"fuzz-{uuid.uuid4().hex}"
    breakage = draw(st.sampled_from(["quantity", "sku", "order_id", "missing", "extra", "root"]))
    body = dict(good)
    if breakage == "quantity":
        body["quantity"] = draw(
            st.integers(max_value=0)
            | st.integers(min_value=1_000_001)
            | st.sampled_from([True, "1", "2", 1.5, 2.5, None, [], {}, math.nan, math.inf, "\uff11"])
        )
    elif breakage == "sku":
        body["sku"] = draw(
            st.sampled_from(["", "x" * 65, "A 1", "A/1", "ÄNVIL", None, 1, [SKU], SKU + "\n", "x" * HUGE])
            | st.text(min_size=1, max_size=10).filter(lambda s: not SKU_PATTERN.fullmatch(s))
        )
    elif breakage == "order_id" and target == "inventory.reserve":
        body["order_id"] = draw(st.sampled_from(["", "o" * 65, None, 5, ["o"]]))
    elif breakage == "missing":
        del body[draw(st.sampled_from(sorted(body)))]
    elif breakage == "extra" or breakage == "order_id":
        body[draw(st.sampled_from(["surprise", "on_hand", "reserved", "Quantity", "sku "]))] = draw(junk)
    else:
        return draw(st.sampled_from([[], "x", 5, None]))
    return body


@st.composite
def inventory_junk(draw: st.DrawFn, reply_channel: str) -> Any:
    if draw(st.integers(0, 3)) == 0:
        return draw(
            to_send(reply_channel, ["inventory.restock", "inventory.reserve", "inventory.nope"], junk)
        )
    target = draw(st.sampled_from(["inventory.restock", "inventory.reserve"]))
    message = bus.messages.envelope(
        draw(st.sampled_from(["bus.request", "bus.request", "bus.command"])),
        target,
        stock_is_invalid(draw, target),
        reply_to=reply_channel,
        deadline=draw(st.sampled_from([None, time.time() + 60, math.nan, math.inf])),
    )
    return dict(message)


def inventory_oracle(message: dict[str, Any]) -> bool | None:
    return False  # everything aimed at inventory here is invalid


@FUZZ_SETTINGS
@given(data=st.data())
async def test_invalid_restocks_and_reserves_are_refused_and_change_no_stock(data: Any) -> None:
    reply_channel = f"fuzz.reply.{uuid.uuid4().hex}"
    batch = data.draw(st.lists(inventory_junk(reply_channel), min_size=1, max_size=15))
    async with serving("inventory") as worker:
        client = Inventory.client()
        await client.add_product(sku=SKU, name="Fuzzed anvil", price_cents=1_000)
        before = await bus.acall("inventory.stock", sku=SKU)
        await run_batch("inventory", batch, reply_channel, inventory_oracle)

        async def handled() -> int:
            return worker.handled

        # Commands are not answered: wait until the worker has handled every message it was sent
        # (the two calls above, and each dict of the batch; the layer refuses the rest).
        sent = 2 + sum(isinstance(message, dict) for message in batch)
        await apoll(handled, lambda count: count >= sent, what=f"the worker to handle {sent} messages")
        after = await bus.acall("inventory.stock", sku=SKU)
        assert (after["on_hand"], after["reserved"]) == (before["on_hand"], before["reserved"]), batch
        assert await bus.acall("inventory.stock", sku=SKU)
