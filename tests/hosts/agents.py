"""What runs on the client host: shoppers through the balancer, and WebSocket watchers.

    python -m tests.hosts.agents shop http://10.N.0.30 --clients 6 --orders 120 --out load.json
    python -m tests.hosts.agents watch ws://10.N.0.31:8000/ws/ --origin http://10.N.0.30 --out w.jsonl

`shop` places checkouts as tests/load.py does (each client signed in, retried on 5xx with the same
Idempotency-Key) and writes the order ids and every status seen. `watch` follows the stock topic
as the page does: resume by cursor, and when the socket dies (the server's close, or no answer to
its own pings within 2 s), reconnect after a short pause and resume from the last cursor. Each
event is appended as a JSON line the moment it arrives; SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any


def shop(arguments: argparse.Namespace) -> None:
    import django

    django.setup()
    from tests.load import place_orders

    load = place_orders(arguments.base, clients=arguments.clients, orders=arguments.orders)
    result = {
        "order_ids": load.order_ids,
        "statuses": {str(status): count for status, count in load.statuses.items()},
        "errors": load.errors,
        "seconds": load.seconds(),
    }
    Path(arguments.out).write_text(json.dumps(result))


async def watch(arguments: argparse.Namespace) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake
    from websockets.typing import Origin

    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    cursor: str | None = None
    with Path(arguments.out).open("a") as out:  # noqa: ASYNC230 (one file, lines written as they come)

        def record(frame: dict[str, Any]) -> None:
            out.write(json.dumps({"at": time.time(), **frame}) + "\n")
            out.flush()

        while not stopping.is_set():
            try:
                async with connect(
                    arguments.uri,
                    origin=Origin(arguments.origin),
                    open_timeout=5,
                    ping_interval=1,
                    ping_timeout=2,
                    close_timeout=1,
                ) as socket:
                    served_by = socket.response.headers.get("X-Served-By") if socket.response else None
                    await socket.send(json.dumps({"type": "resume", "cursor": cursor}))
                    record({"type": "open", "cursor": cursor, "served_by": served_by})
                    reader = asyncio.ensure_future(_read(socket, record))
                    stopper = asyncio.ensure_future(stopping.wait())
                    done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    stopper.cancel()
                    if reader in done:
                        cursor = reader.result() or cursor
                    else:
                        reader.cancel()
                        return
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as error:
                record({"type": "failed", "error": repr(error)})
            await asyncio.sleep(0.3)


async def _read(socket: Any, record: Any) -> str | None:
    """Read frames until the socket ends; the last cursor seen."""
    from websockets.exceptions import ConnectionClosed

    cursor = None
    try:
        async for text in socket:
            frame = json.loads(text)
            if frame.get("type") in ("event", "hello", "reload"):
                cursor = frame["cursor"]
                record(frame)
                if frame["type"] == "event":
                    await socket.send(json.dumps({"type": "ack", "cursor": cursor}))
            elif frame.get("type") == "ping":
                await socket.send('{"type": "pong"}')
    except ConnectionClosed:
        pass
    record({"type": "closed", "code": socket.close_code})
    return cursor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shopper = commands.add_parser("shop")
    shopper.add_argument("base")
    shopper.add_argument("--clients", type=int, default=6)
    shopper.add_argument("--orders", type=int, default=120)
    shopper.add_argument("--out", required=True)
    watcher = commands.add_parser("watch")
    watcher.add_argument("uri")
    watcher.add_argument("--origin", required=True)
    watcher.add_argument("--out", required=True)
    arguments = parser.parse_args()
    if arguments.command == "shop":
        shop(arguments)
    else:
        asyncio.run(watch(arguments))
    sys.exit(0)


if __name__ == "__main__":
    main()
