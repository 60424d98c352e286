"""The test routing table plus the benchmark-only `sink` domain (`runworker sink`)."""

from channels.routing import ChannelNameRouter, ProtocolTypeRouter

from bench.sink import SinkService
from tests import routing

application = ProtocolTypeRouter(
    {
        **routing.application.application_mapping,
        "channel": ChannelNameRouter(
            {
                **routing.application.application_mapping["channel"].application_mapping,
                "sink": SinkService.as_asgi(),
            }
        ),
    }
)
