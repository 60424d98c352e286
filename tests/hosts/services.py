"""The servers of the many-machine topology, each started inside its own host (tests/hosts/network.py).

- `Tls`: a certificate authority made for the run, and one server certificate for every Redis host.
- `RedisSet`: a primary, a replica and a Sentinel on each of three hosts; TLS only; ACL users, a
  password each (one per service identity, plus the replication and Sentinel users).
- `PostgresSet`: a private PostgreSQL cluster on the database host and a streaming replica of it;
  one role per domain that can connect only to its own database (and, in the shared one, to the
  bus's own tables once `manage.py bus grant` ran: dead letters and read-only switches).
- `Balancer`: HAProxy in front of the web hosts, checking that each one's daphne answers.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import psycopg
import redis

from deploy.make_secrets import Authority
from tests.hosts.network import Host
from tests.polling import poll

MASTER = "bus"  # the primary's name as the Sentinels know it
#: Who reaches Redis: one ACL user per service identity (the process kinds of the README).
SERVICES = ("web", "inventory", "orders", "payments", "presentation", "operators")
DOMAINS = ("inventory", "orders", "payments")
#: Where Debian puts each installed PostgreSQL version's server programs.
POSTGRES_VERSIONS = Path("/usr/lib/postgresql")


def postgres_program(name: str) -> str:
    """A PostgreSQL server program (initdb, postgres, pg_basebackup) of the newest version installed."""
    versions = sorted(POSTGRES_VERSIONS.glob("*/bin"), key=lambda folder: int(folder.parent.name))
    if not versions:
        raise RuntimeError(
            f"No PostgreSQL server programs in {POSTGRES_VERSIONS} (apt-get install postgresql)."
        )
    return str(versions[-1] / name)


def password() -> str:
    return secrets.token_urlsafe(18)


# -- TLS -------------------------------------------------------------------------------------------


@dataclass
class Tls:
    """A CA and a server certificate (key and chain in PEM files) valid for the given addresses."""

    ca: Path
    certificate: Path
    key: Path

    @classmethod
    def make(cls, directory: Path, addresses: list[str]) -> Tls:
        """The compose file's kind (deploy/make_secrets.py), for this run's addresses."""
        directory.mkdir(parents=True, exist_ok=True)
        tls = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
        authority = Authority(days=1)
        authority.write(tls.ca)
        authority.issue(addresses, tls.certificate, tls.key)
        return tls

    def options(self) -> list[str]:
        """redis-server's TLS lines: TLS only, clients prove who they are with a password."""
        return [
            "port 0",
            f"tls-cert-file {self.certificate}",
            f"tls-key-file {self.key}",
            f"tls-ca-cert-file {self.ca}",
            "tls-auth-clients no",
            "tls-replication yes",
        ]


# -- Redis -----------------------------------------------------------------------------------------


@dataclass
class RedisSet:
    """Primary on hosts[0], replica on hosts[1], a Sentinel on each of the three (quorum 2)."""

    hosts: list[Host]
    directory: Path
    tls: Tls
    passwords: dict[str, str] = field(default_factory=dict)

    PORT = 6379
    SENTINEL_PORT = 26379

    def __post_init__(self) -> None:
        self.passwords = {user: password() for user in (*SERVICES, "admin", "replication", "sentinel")}

    def url(self, user: str) -> str:
        """The Sentinel URL a process of `user` is configured with (REDIS_URL)."""
        sentinels = ",".join(f"{host.address}:{self.SENTINEL_PORT}" for host in self.hosts)
        return (
            f"rediss+sentinel://{user}:{self.passwords[user]}@{sentinels}/{MASTER}/0"
            f"?ssl_ca_certs={self.tls.ca}"
        )

    def _users(self) -> list[str]:
        """ACL lines: services may use the bus's keys, never administer the server."""
        lines = ["user default off"]
        for user in SERVICES:
            lines.append(f"user {user} on >{self.passwords[user]} ~* &* +@all -@admin -@dangerous +info")
        lines += [
            f"user admin on >{self.passwords['admin']} ~* &* +@all",
            f"user replication on >{self.passwords['replication']} +psync +replconf +ping",
            f"user sentinel on >{self.passwords['sentinel']} allchannels +multi +slaveof +ping +exec "
            "+subscribe +config|rewrite +role +publish +info +client|setname +client|kill +script|kill",
        ]
        return lines

    def start(self) -> None:
        for index, host in enumerate(self.hosts[:2]):
            folder = self.directory / host.name
            folder.mkdir(parents=True, exist_ok=True)
            lines = [
                f"bind {host.address}",
                f"tls-port {self.PORT}",
                *self.tls.options(),
                f"dir {folder}",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "masteruser replication",
                f"masterauth {self.passwords['replication']}",
                *self._users(),
            ]
            if index == 1:
                lines.append(f"replicaof {self.hosts[0].address} {self.PORT}")
            config = folder / "redis.conf"
            config.write_text("\n".join(lines) + "\n")
            host.spawn("redis", ["redis-server", str(config)])
        for host in self.hosts:
            config = self.directory / host.name / "sentinel.conf"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(
                "\n".join(
                    [
                        f"bind {host.address}",
                        f"tls-port {self.SENTINEL_PORT}",
                        *self.tls.options(),
                        f"dir {config.parent}",
                        f"sentinel monitor {MASTER} {self.hosts[0].address} {self.PORT} 2",
                        f"sentinel down-after-milliseconds {MASTER} 1000",
                        f"sentinel failover-timeout {MASTER} 4000",
                        f"sentinel auth-user {MASTER} sentinel",
                        f"sentinel auth-pass {MASTER} {self.passwords['sentinel']}",
                        # Sentinels and clients sign in to Sentinels too.
                        "user default off",
                        f"user sentinel on >{self.passwords['sentinel']} allcommands",
                        *(f"user {user} on >{self.passwords[user]} allcommands" for user in SERVICES),
                        "sentinel sentinel-user sentinel",
                        f"sentinel sentinel-pass {self.passwords['sentinel']}",
                    ]
                )
                + "\n"
            )
            host.spawn("sentinel", ["redis-server", str(config), "--sentinel"])
        poll(
            lambda: self.admin(self.hosts[1]).info("replication")["master_link_status"],
            lambda status: status == "up",
            what="the Redis replica to sync",
            timeout=30,
            ignoring=(redis.RedisError,),
        )
        poll(
            lambda: cast(dict[str, Any], self.sentinel(self.hosts[2]).sentinel_master(MASTER)),
            lambda master: master["num-other-sentinels"] == 2 and master["num-slaves"] == 1,
            what="every Sentinel to see the others and the replica",
            timeout=30,
            ignoring=(redis.RedisError,),
        )

    def _tls(self) -> dict[str, Any]:
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.tls.ca),
            "socket_timeout": 2,
            "socket_connect_timeout": 2,
        }

    def admin(self, host: Host) -> redis.Redis:
        return redis.Redis(
            host=host.address,
            port=self.PORT,
            username="admin",
            password=self.passwords["admin"],
            **self._tls(),
        )

    def sentinel(self, host: Host) -> redis.Redis:
        return redis.Redis(
            host=host.address,
            port=self.SENTINEL_PORT,
            username="sentinel",
            password=self.passwords["sentinel"],
            decode_responses=True,
            **self._tls(),
        )

    def primary(self, asking: Host) -> str:
        """The primary's address, as the Sentinel on `asking` knows it."""
        address = self.sentinel(asking).sentinel_get_master_addr_by_name(MASTER)
        assert isinstance(address, tuple | list), address
        return str(address[0])


# -- PostgreSQL ------------------------------------------------------------------------------------


@dataclass
class PostgresSet:
    """A primary (port 5432) and a streaming replica (5433) on the database host."""

    host: Host
    directory: Path
    passwords: dict[str, str] = field(default_factory=dict)

    #: Role and database of each alias: the shared one belongs to the site (web and presentation).
    DATABASES = {"default": ("site", "site"), **{domain: (domain, domain) for domain in DOMAINS}}

    def __post_init__(self) -> None:
        roles = {role for role, _ in self.DATABASES.values()}
        self.passwords = {role: password() for role in (*roles, "postgres", "replicator")}

    def _as_postgres(self, *command: str) -> None:
        self.host.run("runuser", "-u", "postgres", "--", *command)

    def start(self) -> None:
        primary, replica = self.directory / "primary", self.directory / "replica"
        self.directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.directory, "postgres")
        secret = self.directory / "pwfile"
        secret.write_text(self.passwords["postgres"])
        shutil.chown(secret, "postgres")
        self._as_postgres(
            postgres_program("initdb"), "-D", str(primary), "-U", "postgres", f"--pwfile={secret}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
        )  # fmt: skip
        subnet = f"{self.host.address.rsplit('.', 1)[0]}.0/24"
        hba = ["local all all trust", f"host replication replicator {subnet} scram-sha-256"]
        hba += [f"host {name} {role} {subnet} scram-sha-256" for role, name in self.DATABASES.values()]
        hba += [f"host site {domain} {subnet} scram-sha-256" for domain in DOMAINS]
        hba.append(f"host all postgres {self.host.network.gateway}/32 scram-sha-256")
        (primary / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        self._configure(primary, 5432)
        self.host.spawn("postgres", [postgres_program("postgres"), "-D", str(primary)], user="postgres")
        self._wait(5432)
        self._roles()
        env = {**os.environ, "PGPASSWORD": self.passwords["replicator"]}
        subprocess.run(
            ["ip", "netns", "exec", self.host.namespace, "runuser", "-u", "postgres", "--",
             postgres_program("pg_basebackup"), "-h", self.host.address, "-p", "5432", "-U", "replicator",
             "-D", str(replica), "-R", "-X", "stream", "-c", "fast"],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        self._configure(replica, 5433)
        self.host.spawn(
            "postgres-replica", [postgres_program("postgres"), "-D", str(replica)], user="postgres"
        )
        self._wait(5433)

    def _configure(self, data: Path, port: int) -> None:
        with (data / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '{self.host.address}'\nport = {port}\n"
                f"unix_socket_directories = '{data}'\nwal_level = replica\nhot_standby = on\n"
                "max_connections = 200\nfsync = off\nsynchronous_commit = off\n"
            )

    def _wait(self, port: int) -> None:
        poll(
            lambda: self.host.run(
                postgres_program("pg_isready"), "-q", "-h", self.host.address, "-p", str(port), check=False
            ),
            lambda _: self.host.run(
                postgres_program("pg_isready"), "-h", self.host.address, "-p", str(port), check=False
            ).endswith("accepting connections\n"),
            what=f"PostgreSQL on port {port}",
            timeout=60,
        )

    def superuser(self, database: str = "postgres", port: int = 5432) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.host.address,
            port=port,
            user="postgres",
            password=self.passwords["postgres"],
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def _roles(self) -> None:
        with self.superuser() as connection:
            connection.execute(
                f"CREATE ROLE replicator REPLICATION LOGIN PASSWORD '{self.passwords['replicator']}'"
            )
            for role, name in self.DATABASES.values():
                connection.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{self.passwords[role]}'")
                connection.execute(f"CREATE DATABASE {name} OWNER {role}")
                connection.execute(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC")

    def urls(self, role: str) -> dict[str, str]:
        """The *_DATABASE_URL variables of a process that signs in as `role`: its own database and
        replica, the shared one; another domain's database is not among them."""
        urls: dict[str, str] = {}
        for alias, (_, name) in self.DATABASES.items():
            if alias != "default" and alias != role and role != "migrator":
                continue
            user = self.DATABASES[alias][0] if role == "migrator" else role
            prefix = "DATABASE_URL" if alias == "default" else f"{alias.upper()}_DATABASE_URL"
            credentials = f"{user}:{self.passwords[user]}"
            urls[prefix] = f"postgres://{credentials}@{self.host.address}:5432/{name}"
            if alias != "default":
                urls[f"{alias.upper()}_REPLICA_DATABASE_URL"] = (
                    f"postgres://{credentials}@{self.host.address}:5433/{name}"
                )
        return urls


# -- the balancer ----------------------------------------------------------------------------------


@dataclass
class Balancer:
    """HAProxy on `host`:80 in front of daphne on each web host, which it checks every 500 ms."""

    host: Host
    directory: Path

    @property
    def control(self) -> Path:
        """HAProxy's admin socket: a file, so the runner reaches it across namespaces."""
        return self.directory / "haproxy.sock"

    def start(self, web: list[Host]) -> None:
        config = self.directory / "haproxy.cfg"
        config.write_text(haproxy_config(self.host, web, self.control))
        self.host.spawn("haproxy", ["haproxy", "-f", str(config), "-db"])

    def servers(self) -> dict[str, str]:
        """Each web host's state as HAProxy sees it now: "UP", "DOWN", ..."""
        with socket.socket(socket.AF_UNIX) as control:
            control.settimeout(5)
            control.connect(str(self.control))
            control.sendall(b"show stat\n")
            text = b""
            while chunk := control.recv(65536):
                text += chunk
        rows = [line.split(",") for line in text.decode().splitlines() if line.startswith("daphne,")]
        return {row[1]: row[17] for row in rows if row[1] != "BACKEND"}


def haproxy_config(host: Host, web: list[Host], control: Path) -> str:
    servers = "\n".join(f"    server {w.name} {w.address}:8000 check" for w in web)
    return f"""global
    maxconn 8000
    stats socket {control} mode 600 level admin
defaults
    mode http
    option httplog
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    retries 2
    option redispatch
frontend shop
    bind {host.address}:80
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    default_backend daphne
backend daphne
    balance roundrobin
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host {host.address}
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
    # Which web host answered: a WebSocket client can tell where its socket lives.
    http-response set-header X-Served-By %s
{servers}
"""
