"""The shop on many hosts: the README's processes, each on its host, configured as in production.

    runner (.1)   the test: an operator's machine on the network (signs as "operators")
    redis-1..3    Redis primary (1), replica (2), a Sentinel on each; TLS and ACL users
    db            PostgreSQL primary :5432 and streaming replica :5433; a role per domain
    balancer      HAProxy :80 in front of web-1 and web-2 (daphne :8000)
    worker-1..2   `manage.py runworker DOMAIN` for every domain (worker-3 joins in one scenario)
    client        shoppers and WebSocket watchers (tests/hosts/agents.py)

Every process runs project.settings from its environment (REDIS_URL, *_DATABASE_URL, the secret
key, its service identity and signing key), as the compose file's containers do; nothing listens
outside the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bus import identity
from tests.hosts.network import Host, Network, Process
from tests.hosts.services import DOMAINS, SERVICES, Balancer, PostgresSet, RedisSet, Tls
from tests.polling import poll

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DAPHNE = str(Path(sys.executable).with_name("daphne"))
#: The worker processes of each worker host: one `runworker` per domain, as in the compose file.
WORKERS = (*DOMAINS, "presentation")


class Cluster:
    """Every host and server of the topology; `start()` brings it up, the network's close ends it."""

    def __init__(self, network: Network, directory: Path) -> None:
        self.network = network
        self.directory = directory
        self.redis_hosts = [network.host(f"redis-{n}", 10 + n) for n in (1, 2, 3)]
        self.db = network.host("db", 20)
        self.balancer = network.host("balancer", 30)
        self.haproxy = Balancer(self.balancer, directory)
        self.web = [network.host(f"web-{n}", 30 + n) for n in (1, 2)]
        self.workers = [network.host(f"worker-{n}", 40 + n) for n in (1, 2)]
        self.client = network.host("client", 50)
        self.tls = Tls.make(directory / "tls", [host.address for host in self.redis_hosts])
        self.redis = RedisSet(self.redis_hosts, directory / "redis", self.tls)
        # Not under pytest's folders, which only root may enter: PostgreSQL runs as postgres.
        self.postgres = PostgresSet(self.db, Path(tempfile.mkdtemp(prefix="bus-hosts-postgres-")))
        self.secret_key = secrets.token_urlsafe(50)
        # A key pair per service identity; each process is given only its own private key, every
        # process trusts every service's public key (only workers check them).
        self.keys = directory / "keys"
        self.trusted = directory / "trusted"
        self.trusted.mkdir()
        for service in SERVICES:
            _, public, _ = identity.new_key(self.keys, service)
            shutil.copy(public, self.trusted)

    @property
    def base(self) -> str:
        return f"http://{self.balancer.address}"

    def env(self, identity: str, host: Host | None = None) -> dict[str, str]:
        """The environment of a process of `identity` ("web", a domain, "presentation", "operators"):
        its own Redis user, database role and signing key."""
        role = {"web": "site", "presentation": "site", "operators": "migrator"}.get(identity, identity)
        data = self.directory / "data" / (host.name if host else "runner") / identity
        data.mkdir(parents=True, exist_ok=True)
        allowed = [self.balancer.address, *(web.address for web in self.web)]
        return {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/root"),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DJANGO_SECRET_KEY": self.secret_key,
            "DJANGO_ALLOWED_HOSTS": ",".join(allowed),
            "DJANGO_BEHIND_PROXY": "1",
            "DJANGO_DATA_DIR": str(data),
            "REDIS_URL": self.redis.url(identity),
            "BUS_IDENTITY": identity,
            "BUS_SIGNING_KEY": str(self.keys / f"{identity}.pem"),
            "BUS_TRUSTED_KEYS": str(self.trusted),
            **self.postgres.urls(role),
        }

    def manage(self, *arguments: str, identity: str = "operators", timeout: float = 180) -> str:
        """`manage.py ARGS` from the runner, as an operator would run it."""
        result = subprocess.run(
            [PYTHON, "manage.py", *arguments],
            cwd=ROOT,
            env=self.env(identity),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(arguments)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def start(self, worker_hosts: int | None = None) -> None:
        """Every server, then the workers on the first `worker_hosts` worker hosts (all by default)."""
        began = time.monotonic()
        self.redis.start()
        self.postgres.start()
        self.manage("migrate_all", "-v0")
        self.manage("bus", "grant", *DOMAINS)
        for host in self.workers[:worker_hosts]:
            self.start_workers(host)
        self.manage("seed")
        for host in self.web:
            self.start_web(host)
        self.haproxy.start(self.web)
        self.wait_ready()
        print(f"[hosts] {len(self.network.hosts)} hosts up in {time.monotonic() - began:.1f} s")

    def start_workers(self, host: Host) -> None:
        for domain in WORKERS:
            host.spawn(domain, [PYTHON, "manage.py", "runworker", domain], env=self.env(domain, host))

    def start_web(self, host: Host) -> Process:
        command = [DAPHNE, "--bind", host.address, "--port", "8000", "project.asgi:application"]
        return host.spawn("daphne", command, env=self.env("web", host))

    def get(self, path: str, timeout: float = 5) -> tuple[int, dict[str, Any]]:
        """GET through the balancer: the status and the JSON body."""
        request = urllib.request.Request(self.base + path, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                body = error.read()
            try:
                return error.code, json.loads(body)
            except ValueError:  # the balancer's own page, when no web host is up
                return error.code, {"body": body.decode(errors="replace")}

    def wait_ready(self, timeout: float = 120) -> None:
        """Every web host in service at the balancer, and the shop ready through it."""
        poll(
            self.haproxy.servers,
            lambda servers: set(servers.values()) == {"UP"} and len(servers) == len(self.web),
            what="every web host UP at the balancer",
            timeout=timeout,
            ignoring=(OSError,),
        )
        poll(
            lambda: self.get("/readyz"),
            lambda answer: answer[0] == 200,
            what="the shop ready through the balancer",
            timeout=timeout,
            ignoring=(OSError,),
        )

    def shop(self, name: str, *, clients: int, orders: int) -> Process:
        """Start `clients` shoppers on the client host placing `orders` checkouts through the
        balancer (tests/hosts/agents.py); `shopped` waits for them."""
        out = self.directory / f"{name}.json"
        command = [PYTHON, "-m", "tests.hosts.agents", "shop", self.base, "--clients", str(clients)]
        command += ["--orders", str(orders), "--out", str(out)]
        env = {**self.env("operators", self.client), "DJANGO_SETTINGS_MODULE": "tests.settings"}
        return self.client.spawn(name, command, env=env)

    def shopped(self, process: Process, timeout: float = 300) -> dict[str, Any]:
        """What the shoppers of `process` placed and saw, once they are done."""
        process.popen.wait(timeout)
        assert process.popen.returncode == 0, process.output()[-3000:]
        result: dict[str, Any] = json.loads((self.directory / f"{process.name}.json").read_text())
        return result

    @contextlib.contextmanager
    def operator(self) -> Iterator[None]:
        """This process calls the shop as its operators do: their Redis user and signing key."""
        from channels.layers import channel_layers as registry
        from django.conf import settings
        from django.test.utils import override_settings

        from bus.client import default_bus, run_sync
        from bus.conf import channel_layers

        env = self.env("operators")
        overrides = override_settings(
            CHANNEL_LAYERS=channel_layers(env["REDIS_URL"]),
            BUS={**settings.BUS, "IDENTITY": "operators", "SIGNING_KEY": env["BUS_SIGNING_KEY"]},
        )
        with overrides:
            registry.backends.clear()
            try:
                yield
            finally:
                run_sync(default_bus.aclose)
        registry.backends.clear()

    def close(self) -> None:
        """Stop every process on every host, then remove what lives outside pytest's folders."""
        self.network.close()
        shutil.rmtree(self.postgres.directory, ignore_errors=True)

    def logs(self) -> str:
        """The end of every process's log, for a failure's report."""
        parts = []
        for host in self.network.hosts.values():
            for process in host.processes.values():
                parts.append(f"--- {host.name} {process.name}\n{process.output()[-1500:]}")
        return "\n".join(parts)
