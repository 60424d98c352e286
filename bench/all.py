"""Every benchmark, one after the other, into one Markdown report.

    .venv/bin/python bench/all.py [--quick] [--output bench/results/all.md]

Runs bench/rpc.py (the bus against the raw channels-redis layer, a hand-rolled redis-py
request/reply, Celery and FastStream), bench/delivery.py (durable one-way commands: the bus
at-least-once and at-most-once against Celery with late acknowledgement and FastStream's Redis
stream consumer group), bench/edge.py (HTTP through the bus against a plain Channels endpoint,
WebSockets held, broadcast fan-out) and bench/checkout.py (20 clients placing orders through the
HTTP API of `manage.py up`, on SQLite and PostgreSQL), each in its own process so that none warms
another, and joins their reports. The figures of the first three are compared with baselines
measured in the same run; the checkout's are absolute, with the CPU each process spent.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SUITE = ["rpc.py", "delivery.py", "edge.py", "checkout.py"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short version of every benchmark")
    parser.add_argument("--output", type=Path, default=None, help="also write the joined report here")
    arguments = parser.parse_args(argv)
    reports = []
    with tempfile.TemporaryDirectory(prefix="bench-all-") as directory:
        for script in SUITE:
            output = Path(directory) / f"{script}.md"
            command = [sys.executable, str(BENCH / script), "--output", str(output)]
            if arguments.quick:
                command.append("--quick")
            print(f"== {script}", file=sys.stderr, flush=True)
            if subprocess.run(command, cwd=BENCH.parent, stdout=subprocess.DEVNULL).returncode != 0:
                print(f"{script} failed; its own run shows why: {' '.join(command)}", file=sys.stderr)
                return 1
            reports.append(output.read_text())
    report = "\n\n".join(reports)
    print(report, end="")
    if arguments.output:
        arguments.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
