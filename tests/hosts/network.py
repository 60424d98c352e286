"""Hosts on one machine: Linux network namespaces on a bridge, each with an address of its own.

    with Network() as net:
        redis = net.host("redis-1")                       # 10.N.0.11 inside its namespace only
        redis.spawn("redis", ["redis-server", "--bind", redis.address])
        redis.drop()  ... redis.restore()                 # its traffic lost both ways, then back

The bridge lives in this (the runner's) namespace with the address .1, so the test itself reaches
every host as an operator's machine would; the hosts reach each other through the bridge. Faults
are the network's: `cut` takes a host's link down (its connections fail at once), `drop` unplugs
its link from the bridge (every packet both ways lost: its peers and it see silence, as in a real
partition). `close` kills every process in every namespace (`ip netns pids`, so nothing a
process forked survives) and removes the namespaces, links and bridge; a run that died without
closing is cleaned up by the next one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

PREFIX = "dd"  # every namespace and link this module makes starts with it
_networks = itertools.count()


def ip(*arguments: str, check: bool = True) -> str:
    """Run `ip ARGS` in the runner's namespace and return what it printed."""
    command = ["ip", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


def in_namespace(
    namespace: str, *command: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 30
) -> str:
    """Run any command inside `namespace` and return what it printed."""
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, *command], capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} in {namespace} failed: {result.stderr.strip()}")
    return result.stdout


def namespace_pids(namespace: str) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30)
    return [int(pid) for pid in result.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(name: str) -> bool:
    """Whether `name` (a namespace or a link) was made by a run whose process is gone."""
    owner = re.match(rf"{PREFIX}(\d+)", name)
    return owner is not None and not _alive(int(owner.group(1)))


def clean_stale() -> None:
    """Remove what an earlier run left behind (its pid, in every name, is no longer alive)."""
    for line in ip("netns", "list").splitlines():
        name = line.split()[0]
        if _stale(name):
            for pid in namespace_pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            ip("netns", "del", name, check=False)
    for line in ip("-o", "link").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if _stale(name):
            ip("link", "del", name, check=False)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]

    def output(self) -> str:
        self.log_file.flush()
        return self.log.read_text(errors="replace")


@dataclass
class Host:
    """One machine: a network namespace with one link (eth0) to the bridge."""

    network: Network
    name: str
    address: str
    index: int
    processes: dict[str, Process] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return f"{self.network.tag}-{self.name}"

    @property
    def peer(self) -> str:
        """This host's link as the bridge sees it, in the runner's namespace."""
        return f"{self.network.tag}v{self.index}"

    def run(self, *command: str, check: bool = True, env: dict[str, str] | None = None) -> str:
        return in_namespace(self.namespace, *command, check=check, env=env, timeout=120)

    def attempt(self, *command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run `command` on this host from the project's folder; its exit status is the caller's."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, *command],
            cwd=self.network.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def spawn(
        self, name: str, command: list[str], *, env: dict[str, str] | None = None, user: str | None = None
    ) -> Process:
        """Start `command` inside this host (as `user`, when given), its output in a log file."""
        log = self.network.logs / f"{self.name}.{name}.log"
        log_file = log.open("ab")
        as_user = ["runuser", "-u", user, "--"] if user else []
        # A host name of its own too (a UTS namespace), so that logs and heartbeats say which host.
        named = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', self.name]
        popen = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, *named, *as_user, *command],
            cwd=self.network.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process = self.processes[name] = Process(name, popen, log, log_file)
        return process

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM, timeout: float = 20) -> None:
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, sig)
        try:
            process.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait(10)
        process.log_file.close()

    def cut(self) -> None:
        """Take this host's link down: its connections fail at once, nobody reaches it."""
        self.run("ip", "link", "set", "eth0", "down")

    def drop(self) -> None:
        """Unplug this host's link from the bridge, its own link up: every packet it sends or is
        sent is lost, so its peers and it see only silence, as in a real partition."""
        ip("link", "set", self.peer, "nomaster")

    def restore(self) -> None:
        """Undo `cut` or `drop`: the link up and on the bridge."""
        ip("link", "set", self.peer, "master", self.network.bridge)
        self.run("ip", "link", "set", "eth0", "up")

    def close(self) -> None:
        for name in list(self.processes):
            self.stop(name, signal.SIGKILL, timeout=5)
        for pid in namespace_pids(self.namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The link first: a namespace is freed only once its last process is gone, and its end of
        # the link with it; deleting our end removes both at once.
        ip("link", "del", self.peer, check=False)
        ip("netns", "del", self.namespace, check=False)


class Network:
    """A bridge and the hosts on it; the runner is .1 on the bridge, hosts get the addresses asked."""

    def __init__(self, root: Path, logs: Path) -> None:
        self.root = root
        self.logs = logs
        # The pid says whether the run is alive (clean_stale); the letter tells this process's networks apart.
        self.tag = f"{PREFIX}{os.getpid()}{chr(ord('a') + next(_networks) % 26)}"
        self.bridge = f"{self.tag}br"
        self.subnet = f"10.{random.randrange(100, 250)}.{random.randrange(0, 250)}"
        self.gateway = f"{self.subnet}.1"
        self.hosts: dict[str, Host] = {}

    def __enter__(self) -> Self:
        clean_stale()
        self.logs.mkdir(parents=True, exist_ok=True)
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str, number: int) -> Host:
        """A new host `name` at address .`number` of this network."""
        host = self.hosts[name] = Host(self, name, f"{self.subnet}.{number}", number)
        ip("netns", "add", host.namespace)
        inside = f"{self.tag}i{number}"
        ip("link", "add", host.peer, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", host.namespace)
        ip("link", "set", host.peer, "master", self.bridge)
        ip("link", "set", host.peer, "up")
        host.run("ip", "link", "set", inside, "name", "eth0")
        host.run("ip", "addr", "add", f"{host.address}/24", "dev", "eth0")
        host.run("ip", "link", "set", "eth0", "up")
        host.run("ip", "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()
        self.hosts.clear()
        ip("link", "del", self.bridge, check=False)

    @contextlib.contextmanager
    def fault(self, host: Host, how: str) -> Iterator[None]:
        """`how` is "cut" or "drop"; the host is restored when the block ends, however it ends."""
        began = time.monotonic()
        getattr(host, how)()
        try:
            yield
        finally:
            host.restore()
            print(f"[hosts] {host.name}: {how} for {time.monotonic() - began:.1f} s, restored")
