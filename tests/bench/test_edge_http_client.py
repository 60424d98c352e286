"""bench/edge.py's own HTTP client (used where wrk is not installed) reads every body it is sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bench.edge import http_get, run_client

CHUNKED = (
    b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"ok"\r\n6\r\n: true\r\n1\r\n}\r\n0\r\n\r\n'
)


@pytest.fixture(
    params=[CHUNKED, b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"ok": true}'], ids=["chunked", "sized"]
)
async def server(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    """A keep-alive HTTP server on loopback answering every request with one canned response."""
    response: bytes = request.param

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()


@pytest.mark.timeout(30)
async def test_the_fallback_client_reads_chunked_and_sized_bodies(server: int) -> None:
    status, body = await http_get(server, "/")
    assert (status, body) == (200, b'{"ok": true}')
    row = await run_client("canned", server, "/", 0.3)
    assert row.requests > 0 and row.errors == 0 and row.non_2xx == 0, row
