"""The test application with the evolve domain routed too (tests/evolve/settings.py)."""

from channels.routing import ChannelNameRouter, ProtocolTypeRouter

from tests import routing
from tests.evolve.service import EvolveService

application = ProtocolTypeRouter(
    {
        **routing.application.application_mapping,
        "channel": ChannelNameRouter(
            {
                **routing.application.application_mapping["channel"].application_mapping,
                "evolve": EvolveService.as_asgi(),
            }
        ),
    }
)
