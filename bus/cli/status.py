"""`bus status`: live workers, queued messages and modes per domain, as text or JSON."""

from __future__ import annotations

import asyncio
import json

from django.core.management.base import BaseCommand

from bus.status import SystemStatus, astatus

from .base import Action, Options, per_process_layer, per_process_note
from .listing import json_flag


def status_lines(report: SystemStatus) -> list[str]:
    """The report as people read it: dead letters, then each domain with its workers."""
    lines = [f"dead letters: {report['dead_letters']} (manage.py bus deadletters)"]
    for row in report["domains"]:
        mode = f", READ-ONLY ({row['read_only']})" if row["read_only"] is not None else ""
        queues = f"{row['queued']} queued, {row['held']} being handled, {row['retrying']} waiting to retry"
        versions = ""
        if len(row["versions"]) > 1:
            running = ", ".join(f"{version} x{count}" for version, count in row["versions"].items())
            versions = f", {len(row['versions'])} CONTRACT VERSIONS LIVE ({running})"
        lines.append(f"{row['domain']}: {len(row['workers'])} worker(s), {queues}{mode}{versions}")
        for worker_id, info in sorted(row["workers"].items()):
            load = f"in flight {info.get('in_flight')}/{info.get('concurrency')}"
            lines.append(f"  {worker_id}  {load}, handled {info.get('handled')}")
    return lines


def status(command: BaseCommand, options: Options) -> None:
    report = asyncio.run(astatus())
    command.stdout.write(json.dumps(report, indent=2) if options["json"] else "\n".join(status_lines(report)))
    if per_process_layer():
        command.stderr.write(per_process_note("cannot see the workers of any other process"))
    elif not report["domains"]:
        command.stderr.write("No domains: no installed app declares a contract.")


STATUS = Action(
    "status",
    "workers, queued messages and modes per domain",
    status,
    json_flag,
    description="Live workers (with their load), queued messages and read-only mode of every domain.",
)
