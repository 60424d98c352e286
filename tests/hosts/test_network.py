"""The harness itself: hosts reach each other, faults cut them off and heal, and nothing outlives it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hosts.conftest import unusable_here
from tests.hosts.network import Host, Network
from tests.polling import poll

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(120)]

# A server on the host's address that answers every connection with its host's name, and forks a
# child of its own that would outlive it if the harness only killed the processes it started.
SERVER = """
import os, socket, sys, time
if os.fork() == 0:
    time.sleep(3600)
listener = socket.create_server((sys.argv[1], 7000))
while True:
    connection, _ = listener.accept()
    connection.sendall(socket.gethostname().encode())
    connection.close()
"""

# Connects to a host's server, with a 1 s timeout: what it said, or why not.
CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 7000), timeout=1) as connection:
        print(connection.recv(100).decode())
except OSError as error:
    print(type(error).__name__)
"""


def answer(client: Host, server: Host) -> str:
    return client.run(sys.executable, "-c", CLIENT, server.address).strip()


def test_hosts_reach_each_other_faults_cut_them_off_and_close_leaves_nothing(tmp_path: Path) -> None:
    missing = unusable_here()
    if missing:
        pytest.fail(f"The many-host tests cannot run here: {missing}.")
    with Network(tmp_path, tmp_path / "logs") as network:
        client, server = network.host("client", 11), network.host("server", 12)
        process = server.spawn("server", [sys.executable, "-c", SERVER, server.address])
        # It answers with its own host's name: each host has one (the heartbeats say where a worker runs).
        poll(lambda: answer(client, server), lambda said: said == "server", what="the server up", timeout=30)
        with network.fault(server, "drop"):
            assert answer(client, server) == "TimeoutError", "a dropped host is silent"
        assert answer(client, server) == "server"
        with network.fault(server, "cut"):
            assert answer(client, server) == "TimeoutError"
        assert answer(client, server) == "server"
        started = [pid for host in (client, server) for pid in _pids(host)]
        assert len(started) >= 2, "the server and the child it forked"
        namespaces = {host.namespace for host in network.hosts.values()}
    poll(_our_namespaces, lambda ours: not ours & namespaces, what="the namespaces removed", timeout=10)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert network.tag not in links
    poll(
        lambda: [pid for pid in started if _alive(pid)],
        lambda alive: not alive,
        what="no process left",
        timeout=10,
    )
    assert process.popen.returncode == -signal.SIGKILL


def _our_namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line}


def _pids(host: Host) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return status != "Z"
