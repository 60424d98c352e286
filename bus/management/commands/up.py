"""`manage.py up`: the whole system with one command; topology is configuration.

Without REDIS_URL (the in-memory layer): ONE process: daphne serves HTTP and WebSockets and every
domain's worker runs in the same event loop. With REDIS_URL: daphne and `runworker` per domain as
separate processes, supervised (see bus.supervisor). Either way the setup commands run first
(settings.BUS["UP_COMMANDS"]: migrations, demo data), and the URL is printed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from channels.layers import InMemoryChannelLayer, channel_layers, get_channel_layer
from channels.routing import get_default_application
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from bus.autoscale import Bounds, Policy, Scaler
from bus.conf import bus_setting
from bus.supervisor import Child, Supervisor
from bus.worker import served_channels as domains


def _count(text: str) -> tuple[str, Bounds]:
    name, _, count = text.partition("=")
    try:
        return name, Bounds.parse(count)
    except ValueError as exc:
        raise CommandError(
            f"--workers takes DOMAIN=COUNT or DOMAIN=MIN:MAX (counts of at least 1), not {text!r}: {exc}."
        ) from None


class Command(BaseCommand):
    help = "Run everything: one process without REDIS_URL, supervised processes with it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--host", default="127.0.0.1", help="address daphne listens on (default: %(default)s)"
        )
        parser.add_argument(
            "--port", type=int, default=8000, help="port daphne listens on (default: %(default)s)"
        )
        parser.add_argument(
            "--workers",
            action="append",
            default=[],
            metavar="DOMAIN=COUNT|MIN:MAX",
            help="worker processes of a domain, with REDIS_URL: a fixed COUNT, or between MIN and MAX "
            "following its queue and load (bus/autoscale.py); repeat for more domains "
            "(default: one per domain)",
        )
        setup = ", ".join(bus_setting("UP_COMMANDS")) or "none are configured"
        parser.add_argument(
            "--no-setup", action="store_true", help=f"skip the setup commands ({setup}) that run first"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        application = get_default_application()
        served = domains(application)
        counts = dict(_count(text) for text in options["workers"])
        unknown = set(counts) - set(served)
        if unknown:
            raise CommandError(
                f"--workers names {sorted(unknown)}, which routing.py does not serve ({served})."
            )
        if not options["no_setup"]:
            for command in bus_setting("UP_COMMANDS"):
                call_command(command, verbosity=0)
        url = f"http://{options['host']}:{options['port']}/"
        layer = get_channel_layer(bus_setting("CHANNEL_LAYER"))
        if isinstance(layer, InMemoryChannelLayer):
            self.stdout.write(f"One process (in-memory layer), serving {', '.join(served)}: {url}")
            self._one_process(application, served, options["host"], options["port"])
            return
        children = [
            Child(
                "web",
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    options["host"],
                    "-p",
                    str(options["port"]),
                    _asgi_path(),
                ],
            )
        ]
        supervisor = Supervisor(children, out=sys.stdout)
        scalers = [
            Scaler(
                supervisor, domain, Policy(counts.get(domain, Bounds(1, 1))), layer, _worker(domain, counts)
            )
            for domain in served
        ]
        for scaler in scalers:
            scaler.start()
        self.stdout.write(f"{len(supervisor.children)} processes on {type(layer).__name__}: {url}")
        growing = [scaler for scaler in scalers if scaler.policy.bounds.least < scaler.policy.bounds.most]
        sys.exit(asyncio.run(_supervise(supervisor, growing)))

    def _one_process(self, application: Any, served: list[str], host: str, port: int) -> None:
        # daphne's module installs Twisted's asyncio reactor: import it before anything else uses Twisted.
        from daphne import server as daphne_server
        from twisted.internet import defer, reactor

        from bus.worker import Worker

        # The setup commands ran their own event loops; the in-memory layer must belong to this one.
        channel_layers.backends.clear()
        loop = daphne_server.twisted_loop
        worker = Worker(application, served, get_channel_layer(bus_setting("CHANNEL_LAYER")))
        running: list[asyncio.Task[None]] = []

        def start_workers() -> None:
            running.append(loop.create_task(worker.run(install_signal_handlers=False)))

        async def finish() -> None:
            worker.stop()
            await asyncio.gather(*running)

        def drain() -> defer.Deferred[None]:
            """On Ctrl-C or SIGTERM, let in-flight messages finish before the reactor stops."""
            return defer.Deferred.fromFuture(loop.create_task(finish()))

        # Twisted's interface stub takes the phase for `self`; the call is the documented one.
        reactor.addSystemEventTrigger("before", "shutdown", drain)  # type: ignore[arg-type]
        daphne_server.Server(
            application, endpoints=[f"tcp:port={port}:interface={host}"], ready_callable=start_workers
        ).run()


def _worker(domain: str, counts: dict[str, Bounds]) -> Callable[[int], Child]:
    """Makes the domain's `number`th worker process: named `orders`, or `orders.2` when it may have more."""
    several = counts.get(domain, Bounds(1, 1)).most > 1

    def make(number: int) -> Child:
        name = f"{domain}.{number}" if several else domain
        return Child(name, [sys.executable, sys.argv[0], "runworker", domain])

    return make


async def _supervise(supervisor: Supervisor, scalers: list[Scaler]) -> int:
    """Run the supervisor, and the scalers of domains that may grow, until it stops."""
    following = [asyncio.create_task(scaler.run()) for scaler in scalers]
    try:
        return await supervisor.run()
    finally:
        for task in following:
            task.cancel()


def _asgi_path() -> str:
    """settings.ASGI_APPLICATION ("project.asgi.application") as daphne takes it ("module:name")."""
    module, _, name = str(settings.ASGI_APPLICATION).rpartition(".")
    return f"{module}:{name}"
