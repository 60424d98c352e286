from channels.routing import ChannelNameRouter, ProtocolTypeRouter

import routing
from tests.echo.service import EchoService
from tests.tally.service import TallyService

application = ProtocolTypeRouter(
    {
        **routing.application.application_mapping,
        "channel": ChannelNameRouter(
            {**routing.domains, "echo": EchoService.as_asgi(), "tally": TallyService.as_asgi()}
        ),
    }
)
