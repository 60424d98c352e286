"""`manage.py runworker inventory [payments ...]`: Channels' command, with a worker that keeps promises."""

from __future__ import annotations

import asyncio
import difflib
import logging
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.routing import get_default_application
from django.core.management.base import BaseCommand, CommandError, CommandParser
from prometheus_client import start_http_server

from bus.conf import bus_setting
from bus.worker import Worker, served_channels

logger = logging.getLogger("bus.worker")


class Command(BaseCommand):
    help = "Serve domain channels from the `channel` entry of routing.py (see bus.worker)."
    leave_locale_alone = True

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "channels",
            nargs="+",
            metavar="DOMAIN",
            help=f"domains to serve, one or more of: {', '.join(_served())}",
        )
        parser.add_argument(
            "--layer",
            default=None,
            help=f"channel layer alias (default: {bus_setting('CHANNEL_LAYER')!r}, from the BUS setting)",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="serve Prometheus metrics on this port (default: off)",
        )
        parser.add_argument(
            "--metrics-address",
            default="127.0.0.1",
            help="address of the metrics port (default: %(default)s)",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help=f"messages handled at once (default: {bus_setting('WORKER_CONCURRENCY')}, "
            "from the BUS setting)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        _check(options["channels"])
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


def _served() -> list[str]:
    try:
        return served_channels(get_default_application())
    except Exception as exc:  # --help must work even when routing.py does not load
        return [f"(routing.py could not be loaded: {type(exc).__name__}: {exc})"]


def _check(channels: list[str]) -> None:
    """Refuse at once a channel that routing.py does not serve: a worker would wait on it forever."""
    served = served_channels(get_default_application())
    for channel in channels:
        if channel not in served:
            close = difflib.get_close_matches(channel.lower(), served, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise CommandError(
                f"routing.py serves no domain named {channel!r}; the domains are: {', '.join(served)}.{hint}"
            )
