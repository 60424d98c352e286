"""`manage.py runworker inventory [payments ...]`: Channels' command, with a worker that keeps promises."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.routing import get_default_application
from django.core.management.base import BaseCommand, CommandError, CommandParser
from prometheus_client import start_http_server

from bus.conf import bus_setting
from bus.worker import Worker

logger = logging.getLogger("bus.worker")


class Command(BaseCommand):
    help = "Serve domain channels from the `channel` entry of routing.py (see bus.worker)."
    leave_locale_alone = True

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("channels", nargs="+", help="Channels (domains) to serve, e.g. inventory.")
        parser.add_argument(
            "--layer", default=None, help="Channel layer alias, if not settings.BUS['CHANNEL_LAYER']."
        )
        parser.add_argument(
            "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port"
        )
        parser.add_argument("--metrics-address", default="127.0.0.1", help="address of the metrics port")
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="Messages handled at once (settings.BUS['WORKER_CONCURRENCY']).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["layer"] or bus_setting("CHANNEL_LAYER")
        layer = get_channel_layer(alias)
        if layer is None:
            raise CommandError(
                f"CHANNEL_LAYERS has no {alias!r} layer; configure one (see bus.conf.channel_layers)."
            )
        if isinstance(layer, InMemoryChannelLayer):
            logger.warning(
                "The in-memory channel layer serves only callers in this process: set REDIS_URL so "
                "that other processes can reach this worker."
            )
        if options["concurrency"] is not None and options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1.")
        if options["metrics_port"] is not None:
            start_http_server(options["metrics_port"], addr=options["metrics_address"])
        worker = Worker(
            get_default_application(), options["channels"], layer, concurrency=options["concurrency"]
        )
        asyncio.run(worker.run())
