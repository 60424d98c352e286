"""The edge as a real process, and a raw WebSocket client that does only what a test says."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import pytest

from tests.conftest import ROOT, free_port
from tests.polling import poll

CLOSE = 0x8  # the opcode of a close frame


@dataclass
class Daphne:
    """daphne serving `tests.browser.asgi` (the project's routes, test settings) on a free loopback
    port, its output in `logs`; it can be killed and started again on the same port."""

    env: dict[str, str]
    logs: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None
    starts: int = 0
    _log_files: list[IO[str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.logs / f"daphne-{self.starts}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> None:
        """Start it, and return once /healthz answers."""
        assert self.process is None or self.process.poll() is not None, "daphne is running already"
        self.starts += 1
        log = self.log_path.open("w")
        self._log_files.append(log)
        command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "tests.browser.asgi:application"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        poll(self._healthy, what="daphne to answer /healthz")

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"daphne exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=5) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        poll(lambda: text in self.log(), what=f"{text!r} in daphne's log", timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: every socket drops at once, with no close frame."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for log in self._log_files:
            log.close()


class RawSocket:
    """A WebSocket client on a plain TCP socket. It never answers a close, so the server stays in
    its closing handshake (autobahn waits a second) while it handles the frames sent before."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        origin = f"http://{parts.netloc}"
        self.sock.sendall(
            f"GET /ws/ HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n".encode()
        )
        self.received = b""
        while b"\r\n\r\n" not in self.received:
            self.received += self._read()
        head, _, self.received = self.received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def _read(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:  # how autobahn drops a client that never answered its close
            return b""

    def send(self, payload: str) -> None:
        """One masked text frame, as a browser sends it."""
        data = payload.encode()
        if len(data) < 126:
            length = bytes([0x80 | len(data)])
        else:
            length = bytes([0x80 | 126]) + len(data).to_bytes(2, "big")
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        # The server may have dropped us first: the frames it sent before say why.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            self.sock.sendall(bytes([0x81]) + length + mask + masked)

    def frames_until_dropped(self) -> list[tuple[int, bytes]]:
        """(opcode, payload) of every frame the server sends until it drops the connection."""
        with self.sock:
            while chunk := self._read():
                self.received += chunk
        frames, data = [], self.received
        while data:
            length, start = data[1] & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(data[2:4], "big"), 4
            elif length == 127:
                length, start = int.from_bytes(data[2:10], "big"), 10
            frames.append((data[0] & 0x0F, data[start : start + length]))
            data = data[start + length :]
        return frames


def close_frame(code: int) -> tuple[int, bytes]:
    """A close frame as daphne sends it: the code, without the reason."""
    return CLOSE, code.to_bytes(2, "big")
