"""`runworker presentation`: log domain events with cursors, then push them to the sockets of their topic."""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from bus import Service, every, subscribe
from bus.conf import bus_setting
from workers.inventory.contract import StockChanged
from workers.orders.contract import OrderUpdated

from . import events
from .contract import Presentation

logger = logging.getLogger(__name__)

# Handlers run in concurrent threads: appending and pushing under one lock sends this process's
# pushes in log order, so a socket rarely sees a push overtaken by a later one (it copes if so).
_in_log_order = threading.Lock()


class PresentationService(Service, contract=Presentation):
    @subscribe("inventory.stock_changed")
    def on_stock_changed(self, event: StockChanged) -> None:
        self._log(events.STOCK, "inventory.stock_changed", event.model_dump(mode="json"))

    @subscribe("orders.updated")
    def on_order_updated(self, event: OrderUpdated) -> None:
        order = event.order.model_dump(mode="json")
        self._log(events.orders_topic(event.order.customer_id), "orders.updated", order)

    @every(600)
    def clean_up_log(self) -> None:
        """Keep the event log to BUS["RETENTION_SECONDS"]; older cursors get "reload"."""
        events.purge(datetime.timedelta(seconds=bus_setting("RETENTION_SECONDS")))

    def _log(self, topic: str, kind: str, data: dict[str, Any]) -> None:
        with _in_log_order:
            entry = events.append(self.context.message_id, topic, kind, data)
            if entry is None:
                return  # a re-delivery: logged and pushed the first time
            # Push is a happy optimisation: a socket that misses it catches up from the log.
            try:
                layer = get_channel_layer(bus_setting("CHANNEL_LAYER"))
                async_to_sync(layer.group_send)(
                    events.group_for(topic), {**entry.as_message(), "type": "log.event"}
                )
            except Exception as exc:
                logger.warning("Could not push %s to the sockets of %s: %s", kind, topic, exc)
