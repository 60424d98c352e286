"""The ASGI app `bench/edge.py` serves with daphne: the project's routes plus bench-only endpoints.

    daphne bench.edge_app:application     (from the repository root, settings tests.settings)

HTTP:
    /bench/plain      a Channels AsyncHttpConsumer answering {"ok": true}: no bus call (baseline)
    /bench/echo       an AsyncHttpConsumer making exactly one bus call, echo.add (a coroutine handler)
    /bench/bus?sku=S  the same with inventory.stock (the worker reads the product through the ORM)
    anything else     the project's Django app
WebSocket:
    /bench/raw/       a plain Channels consumer in one group of the stock channels-redis layer
                      (alias "bench_raw", key prefix "benchraw:"): the fan-out baseline
    anything else     the project's routes (/ws/: consumers.socket.EventsConsumer)
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import parse_qs

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from channels.generic.http import AsyncHttpConsumer  # noqa: E402
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path, re_path  # noqa: E402

import bus  # noqa: E402
import routing  # noqa: E402
from bench.common import RAW_GROUP, RAW_PREFIX, raw_host  # noqa: E402
from project.collector import tune_for_a_server  # noqa: E402

RAW_ALIAS = "bench_raw"
JSON = [(b"Content-Type", b"application/json")]

_url = os.environ.get("BUS_TEST_REDIS_URL")
if _url and RAW_ALIAS not in settings.CHANNEL_LAYERS:
    # Channels reads CHANNEL_LAYERS when a layer is first used, which is after this import.
    stock = {"hosts": [raw_host(_url)], "prefix": RAW_PREFIX}
    layers = {RAW_ALIAS: {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": stock}}
    settings.CHANNEL_LAYERS = {**settings.CHANNEL_LAYERS, **layers}


class Plain(AsyncHttpConsumer):  # type: ignore[misc]  # channels ships no type hints
    """The baseline: a small JSON answer, no bus call."""

    async def handle(self, body: bytes) -> None:
        """Answer {"ok": true}."""
        await self.send_response(200, b'{"ok": true}', headers=JSON)


class OneBusCall(AsyncHttpConsumer):  # type: ignore[misc]
    """Exactly one bus call per request, not cached; its JSON result is the answer."""

    async def call(self, query: dict[str, list[str]]) -> Any:
        raise NotImplementedError

    async def handle(self, body: bytes) -> None:
        """Answer the call's result as JSON, or 503 with the bus error."""
        query = parse_qs(self.scope.get("query_string", b"").decode())
        try:
            result = await self.call(query)
        except bus.BusError as error:
            await self.send_response(503, json.dumps({"error": str(error)}).encode(), headers=JSON)
            return
        await self.send_response(200, json.dumps(result).encode(), headers=JSON)


class BusEcho(OneBusCall):
    """echo.add, a coroutine handler: the bus's own cost, as in bench/rpc.py."""

    async def call(self, query: dict[str, list[str]]) -> Any:
        return await bus.acall("echo.add", a=1, b=2)


class BusStock(OneBusCall):
    """inventory.stock for ?sku=: the worker also reads the product through the ORM."""

    async def call(self, query: dict[str, list[str]]) -> Any:
        return await bus.acall("inventory.stock", sku=query.get("sku", ["BENCH-1"])[0])


class RawFanout(AsyncWebsocketConsumer):  # type: ignore[misc]
    """The fan-out baseline: joins one group of the stock layer and forwards its messages."""

    channel_layer_alias = RAW_ALIAS

    async def connect(self) -> None:
        """Join the group, then accept."""
        await self.channel_layer.group_add(RAW_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        """Leave the group."""
        await self.channel_layer.group_discard(RAW_GROUP, self.channel_name)

    async def log_event(self, message: dict[str, Any]) -> None:
        """Forward a group message as EventsConsumer does, minus its cursor bookkeeping."""
        await self.send(text_data=json.dumps({**message, "type": "event"}))


_project = routing.application.application_mapping
application = ProtocolTypeRouter(
    {
        **_project,
        "http": URLRouter(
            [
                path("bench/plain", Plain.as_asgi()),
                path("bench/echo", BusEcho.as_asgi()),
                path("bench/bus", BusStock.as_asgi()),
                re_path(r"", _project["http"]),
            ]
        ),
        "websocket": URLRouter(
            [
                path("bench/raw/", RawFanout.as_asgi()),
                re_path(r"", _project["websocket"]),
            ]
        ),
    }
)

tune_for_a_server()  # as project/asgi.py does for the project's daphne and workers
