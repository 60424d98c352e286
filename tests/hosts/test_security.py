"""Between machines, nobody gets in: a stranger's host on the network tries every door.

Without credentials it reaches nothing (Redis and its Sentinels speak only TLS and only to known
users; PostgreSQL only to a domain's role on that domain's database). With a Redis user of its own
(web's) it can put messages on the bus, but without the operators' signing key it cannot make
payments credit anyone: the payments workers refuse the message and nothing runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bus
from bus import identity
from tests.chaos.conftest import report
from tests.hosts.conftest import Shop
from tests.hosts.system import PYTHON, Cluster

pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(300)]

# Run on the stranger's host: every door tried, each outcome printed as JSON.
DOORS = """
import json, sys, psycopg, redis
redis_host, ca, pg_host, inventory_password = sys.argv[1:5]
outcomes = {}
def attempt(name, door):
    try:
        door()
        outcomes[name] = "open"
    except Exception as error:
        outcomes[name] = f"{type(error).__name__}: {error}"[:200]
tls = {"ssl": True, "ssl_ca_certs": ca, "socket_timeout": 3, "socket_connect_timeout": 3}
attempt("redis, plain TCP", lambda: redis.Redis(host=redis_host, port=6379, socket_timeout=3).ping())
attempt("redis, TLS, no user", lambda: redis.Redis(host=redis_host, port=6379, **tls).ping())
attempt("redis, TLS, wrong password",
        lambda: redis.Redis(host=redis_host, port=6379, username="web", password="guess", **tls).ping())
attempt("sentinel, TLS, no user", lambda: redis.Redis(host=redis_host, port=26379, **tls).sentinel_masters())
attempt("postgres, no password",
        lambda: psycopg.connect(host=pg_host, user="postgres", dbname="payments", connect_timeout=3))
attempt("postgres, inventory's role on payments", lambda: psycopg.connect(
    host=pg_host, user="inventory", password=inventory_password, dbname="payments", connect_timeout=3))
print(json.dumps(outcomes))
"""


def test_a_host_without_credentials_reaches_nothing(shop: Shop) -> None:
    cluster = shop.cluster
    stranger = cluster.network.hosts.get("stranger") or cluster.network.host("stranger", 60)
    redis_host = cluster.redis.primary(cluster.redis_hosts[2])
    result = stranger.attempt(
        PYTHON, "-c", DOORS, redis_host, str(cluster.tls.ca), cluster.db.address,
        cluster.postgres.passwords["inventory"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outcomes: dict[str, str] = json.loads(result.stdout)
    assert "open" not in outcomes.values(), outcomes
    assert "NOAUTH" in outcomes["redis, TLS, no user"] or "Authentication" in outcomes["redis, TLS, no user"]
    assert (
        "WRONGPASS" in outcomes["redis, TLS, wrong password"]
        or "invalid" in outcomes["redis, TLS, wrong password"]
    )
    assert "no pg_hba.conf entry" in outcomes["postgres, inventory's role on payments"]
    report("no credentials, no entry", [(door, outcome) for door, outcome in outcomes.items()])


def test_with_redis_access_but_not_the_operators_key_nobody_is_credited(
    shop: Shop, operator: Cluster, tmp_path: Path
) -> None:
    cluster = shop.cluster
    stranger = cluster.network.hosts.get("stranger") or cluster.network.host("stranger", 60)
    before = bus.call("payments.statement", customer_id="ada")["balance_cents"]
    forged, _, _ = identity.new_key(tmp_path, "operators")
    web = cluster.env("web", stranger)
    unsigned = {name: value for name, value in web.items() if not name.startswith("BUS_")}
    attempts = {
        "signed as web (its own key)": web,
        "signed as operators with a key of its own making": {
            **web,
            "BUS_IDENTITY": "operators",
            "BUS_SIGNING_KEY": str(forged),
        },
        "unsigned": unsigned,
    }
    outcomes = {}
    for name, env in attempts.items():
        arguments = json.dumps(
            {"customer_id": "ada", "amount_cents": 1_000_000, "reference": f"intruder {name}"}
        )
        result = stranger.attempt(PYTHON, "manage.py", "bus", "call", "payments.credit", arguments, env=env)
        outcomes[name] = (result.returncode, result.stderr.strip().splitlines()[-1] if result.stderr else "")
    assert outcomes["signed as web (its own key)"][0] == 9, outcomes
    assert "Forbidden" in outcomes["signed as web (its own key)"][1], outcomes
    assert all(code == 9 for code, _ in outcomes.values()), outcomes
    assert bus.call("payments.statement", customer_id="ada")["balance_cents"] == before
    refusals = sum(
        host.processes["payments"].output().count("Refused")
        for host in cluster.workers
        if "payments" in host.processes
    )
    report(
        "Redis access, no operators key",
        [
            *((name, f"exit {code}: {said}") for name, (code, said) in outcomes.items()),
            ("ada's balance", f"{before} cents before and after"),
            ("payments workers", f"logged {refusals} refusals; no handler ran"),
        ],
    )
