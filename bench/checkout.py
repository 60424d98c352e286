"""Checkouts through the HTTP API: 20 signed-in clients against `manage.py up`, on SQLite and PostgreSQL.

    .venv/bin/python bench/checkout.py [--orders N] [--clients N] [--quick] [--databases sqlite,postgresql]
                                       [--postgres-url URL] [--suffix NAME] [--workers DOMAIN=COUNT]
                                       [--logs DIR] [--output PATH]

Run from the repository root. For each database it starts a private redis-server and
`manage.py up` with REDIS_URL set (daphne and one `runworker` per domain, as a user gets it, with
DEBUG off): first on its default SQLite files in a fresh directory, then on PostgreSQL databases
`bus_<alias>_<suffix>` (created for the run and dropped after it; `--postgres-url` or
TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432). It stocks up, then `--clients`
sessions (spread over the demo customers) place `--orders` checkouts between them through
`POST /api/orders`, each client one after the other, retrying a 5xx with the same
Idempotency-Key (tests/load.py, which tests/test_load.py drives the same way). It reports per database:

- checkouts per second: orders placed / seconds from the first request to the last answer;
- p50 and p99 of every POST's latency, retries included; the share of 5xx (and dropped connections);
- seconds from the last answer to the last order's final change (its `updated_at`): the saga's
  backlog when the load ends;
- lines of the system's log that say "database is locked", and its lines at level ERROR, from the
  start of the load on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402  (the repository root must be on sys.path first)
from tests.load import Load, place_orders, postgres_databases, settled_after, stock_up, wait_terminal  # noqa: E402
from tests.site import Visitor, wait_ready  # noqa: E402

DATABASES = ("sqlite", "postgresql")
READY_TIMEOUT = 120.0
TERMINAL_TIMEOUT = 600.0
LOCKED = "database is locked"


@dataclass(frozen=True)
class Row:
    """One database's figures."""

    database: str
    orders: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_errors: int
    settled: float
    confirmed: int
    failed: int
    locked: int
    error_lines: int  # log lines at level ERROR, of any process
    refused: int  # checkouts that ended in a 4xx, or 5xx past the client's retry budget
    cpu: dict[str, float | None]  # CPU seconds each process used during the load

    @property
    def per_second(self) -> float:
        return self.orders / self.seconds if self.seconds else 0.0


def system_env(redis_url: str, data_dir: Path, databases: dict[str, str]) -> dict[str, str]:
    """What `up` and its stock-up shell get: project settings, this run's Redis and databases, DEBUG off."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL") and k != "REDIS_URL"}
    return {
        **env,
        **databases,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_DATA_DIR": str(data_dir),
        "REDIS_URL": redis_url,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_hex(32),
        "PYTHONUNBUFFERED": "1",
    }


def children(log: Path) -> dict[str, int]:
    """The pid of each child `up` started, from its log ("orders        | started (pid 4711): ...")."""
    found = re.findall(r"^(\S+)\s+\| started \(pid (\d+)\)", log.read_text(errors="replace"), re.MULTILINE)
    return {name: int(pid) for name, pid in found}


def measure(database: str, arguments: argparse.Namespace, directory: Path) -> tuple[Row, list[str]]:
    """Start the system on `database`, run the load, read the orders back; the row, and versions."""
    processes = common.Processes(directory)
    with contextlib.ExitStack() as stack:
        databases: dict[str, str] = {}
        if database == "postgresql":
            databases = stack.enter_context(postgres_databases(arguments.postgres_url, arguments.suffix))
        # Called first on the way out: the system stops before its databases are dropped.
        stack.callback(processes.stop_all)
        if arguments.logs:
            stack.callback(keep_log, directory / "up.log", arguments.logs / f"{database}-up.log")
        redis_url = common.start_redis(processes)
        env = system_env(redis_url, directory / "data", databases)
        port = common.free_port()
        workers = [f"--workers={spec}" for spec in arguments.workers]
        up = processes.start("up", [sys.executable, "manage.py", "up", "--port", str(port), *workers], env)
        base = f"http://127.0.0.1:{port}"
        common.progress(f"{database}: waiting for `up` on {base}")
        try:
            wait_ready(Visitor(base), timeout=READY_TIMEOUT)
        except AssertionError as exc:
            raise common.BenchmarkError(f"`up` was not ready: {exc}\n{processes.output('up')}") from exc
        stock_up(env, arguments.orders)
        common.progress(f"{database}: {arguments.clients} clients place {arguments.orders} orders")
        pids = {**children(directory / "up.log"), "redis": processes.pid("redis-server"), "clients": None}
        before = common.cpu_snapshot(pids)
        start_of_load = (directory / "up.log").stat().st_size  # the log from here on is the load's
        load = place_orders(base, clients=arguments.clients, orders=arguments.orders)
        cpu = common.cpu_used(before, common.cpu_snapshot(pids))
        orders = wait_terminal(load, timeout=TERMINAL_TIMEOUT)
        if up.poll() is not None:
            raise common.BenchmarkError(f"`up` exited with {up.returncode}:\n{processes.output('up')}")
        with open(directory / "up.log", "rb") as whole:
            log = whole.read()[start_of_load:].decode(errors="replace")
        return row_of(database, load, orders, log, cpu), common.versions(
            redis_url, ("daphne", "psycopg", "psycopg-pool")
        )
    raise AssertionError("unreachable")  # mypy: ExitStack may swallow exceptions


def keep_log(log: Path, kept: Path) -> None:
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, kept)


def row_of(
    database: str, load: Load, orders: dict[str, dict[str, Any]], log: str, cpu: dict[str, float | None]
) -> Row:
    """The figures of one run."""
    latencies = sorted(seconds for _, seconds in load.responses)
    states = [order["state"] for order in orders.values()]
    return Row(
        database=database,
        orders=len(load.order_ids),
        requests=len(load.responses),
        seconds=load.seconds(),
        p50_ms=1000 * common.percentile(latencies, 50),
        p99_ms=1000 * common.percentile(latencies, 99),
        server_errors=load.server_errors(),
        settled=settled_after(load, orders),
        confirmed=states.count("confirmed"),
        failed=states.count("failed"),
        locked=log.count(LOCKED),
        error_lines=len(re.findall(r"^\S+\s+\| \S+ \S+ ERROR ", log, re.MULTILINE)),
        refused=len(load.errors),
        cpu=cpu,
    )


def table(rows: Sequence[Row], clients: int) -> list[str]:
    """The Markdown table: one row per database."""
    lines = [
        f"| database | checkouts/s ({clients} clients) | p50 ms | p99 ms | 5xx | "
        "end of load -> all terminal, s | confirmed / failed | log: 'database is locked' / ERROR lines |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        share = 100 * row.server_errors / row.requests if row.requests else 0.0
        lines.append(
            f"| {row.database} | {row.per_second:.1f} | {row.p50_ms:.0f} | {row.p99_ms:.0f} | "
            f"{share:.1f}% ({row.server_errors} of {row.requests:,}) | {row.settled:.1f} | "
            f"{row.confirmed} / {row.failed} | {row.locked} / {row.error_lines} |"
        )
    names = list(rows[0].cpu) if rows else []
    lines += [
        "",
        f"| database | CPU ms per checkout: {' / '.join(names)} | load, s |",
        "|---|---:|---:|",
    ]
    for row in rows:
        shares = [f"{1000 * used / row.orders:.1f}" if used is not None else "-" for used in row.cpu.values()]
        lines.append(f"| {row.database} | {' / '.join(shares)} | {row.seconds:.1f} |")
    refused = [row for row in rows if row.refused]
    lines += [
        f"\n{row.database}: {row.refused} checkouts were never placed (4xx, or 5xx for 2 min)."
        for row in refused
    ]
    return lines


def header(arguments: argparse.Namespace, measured: list[str]) -> list[str]:
    return [
        *common.report_header(
            "Checkouts through the HTTP API", [*measured, f"SQLite {sqlite3.sqlite_version}"]
        ),
        "- `manage.py up` with REDIS_URL (a private redis-server): daphne and one `runworker` per domain, "
        "project settings, DEBUG off; SQLite: its default files in a fresh directory; PostgreSQL: "
        f"databases bus_<alias>_{arguments.suffix} on {arguments.postgres_url}",
        f"- load: {arguments.clients} signed-in clients (this process, one thread each) place "
        f"{arguments.orders} orders of 1-2 lines, one after the other, through `POST /api/orders`; a 5xx "
        "is retried with the same Idempotency-Key; latency per request, retries included",
        "- all terminal: from the last answer to the last order's final `updated_at`",
        "",
    ]


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=None, help="checkouts per database (default 600)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--quick", action="store_true", help="200 orders per database")
    parser.add_argument(
        "--databases",
        default=",".join(DATABASES),
        help=f"which, comma-separated (default {','.join(DATABASES)})",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"),
        help="the PostgreSQL server (default TEST_POSTGRES_URL or postgres://postgres@127.0.0.1:5432)",
    )
    parser.add_argument(
        "--suffix", default="checkout_bench", help="PostgreSQL databases are bus_<alias>_SUFFIX"
    )
    parser.add_argument(
        "--workers",
        action="append",
        default=[],
        metavar="DOMAIN=COUNT",
        help="passed on to `up` (default: one each)",
    )
    parser.add_argument("--logs", type=Path, default=None, help="keep each run's `up` log in this folder")
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "bench" / "results" / "checkout.md",
        help="write the report here",
    )
    arguments = parser.parse_args(argv)
    arguments.orders = arguments.orders or (200 if arguments.quick else 600)
    chosen = [name.strip() for name in arguments.databases.split(",") if name.strip()]
    if not chosen or set(chosen) - set(DATABASES):
        parser.error(f"--databases takes a comma-separated choice of {', '.join(DATABASES)}")
    arguments.databases = chosen
    if arguments.orders < 1 or arguments.clients < 1:
        parser.error("--orders and --clients must be at least 1")
    return arguments


def postgres_missing(url: str) -> str:
    """Why PostgreSQL at `url` cannot be used ("" when it can): its row is then left out, said why."""
    import psycopg

    try:
        psycopg.connect(f"{url.rstrip('/')}/postgres", connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = str(exc).strip()[:200]
        return f"PostgreSQL not measured: {url} could not be reached ({reason}); set --postgres-url."
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load on each database in turn; every child process is stopped before it returns."""
    arguments = parse_arguments(argv)
    started = time.monotonic()
    rows = []
    notes = []
    measured: list[str] = []
    try:
        for database in arguments.databases:
            missing = postgres_missing(arguments.postgres_url) if database == "postgresql" else ""
            if missing:
                common.progress(missing)
                notes.append(missing)
                continue
            with tempfile.TemporaryDirectory(prefix=f"bench-checkout-{database}-") as directory:
                row, measured = measure(database, arguments, Path(directory))
                rows.append(row)
                common.progress(f"{database}: {row}")
    except (common.BenchmarkError, subprocess.CalledProcessError, AssertionError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    lines = [*header(arguments, measured), *table(rows, arguments.clients), *notes, ""]
    lines.append(f"_Whole run: {time.monotonic() - started:.1f} s._")
    return common.publish(lines, arguments.output)


if __name__ == "__main__":
    sys.exit(main())
