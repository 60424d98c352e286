"""Channel layers for the bus.

Two layers that keep the Channels layer interface (send, receive, new_channel, groups, flush)
and add the small extension API the bus worker and ``bus status`` use (``presence.py``):

* ``receive_batch(channel, max_messages, timeout)``: take up to ``max_messages`` off a normal
  channel, waiting at most ``timeout`` seconds for the first one.
* ``queue_depth(channel)``: messages waiting on a normal channel, expired ones excluded.
* ``presence_beat`` / ``presence_leave`` / ``presence``: which workers serve a channel.

Normal channels are at-most-once: a message popped off Redis by a worker that then dies is
lost, and no message ever runs twice because of the layer. Durable channels (``durable.py``)
are at-least-once: a message stays held by the worker that took it until that worker
acknowledges it, and goes back to the queue when the worker's presence runs out.

The modules, one job each:

* ``redis.py``: ``RedisBusLayer``, channels-redis's layer made fit for competing workers;
* ``memory.py``: ``InMemoryBusLayer``, for one process (dev, tests, ``manage.py up``);
* ``presence.py``: the extension API, written once over each layer's storage primitives;
* ``durable.py``: durable channels' API; ``streams.py`` keeps them in Redis streams;
* ``scripts.py``: every Lua script (each one atomic step on Redis's side);
* ``sends.py``: concurrent sends of one event loop coalesced into pipelines;
* ``local.py``: one reader per process for its process-local channels;
* ``wire.py``: the ONLY module that touches redis-py's connection internals (raw RESP on
  kept connections); ``pyproject.toml`` bounds redis-py for it.
"""

from bus.layers.memory import InMemoryBusLayer
from bus.layers.presence import Message
from bus.layers.redis import DEFAULT_MAX_CONNECTIONS, RedisBusLayer

__all__ = ["DEFAULT_MAX_CONNECTIONS", "InMemoryBusLayer", "Message", "RedisBusLayer"]
