from channels.routing import ChannelNameRouter, ProtocolTypeRouter

import routing
from tests.echo.service import EchoService

application = ProtocolTypeRouter(
    {
        **routing.application.application_mapping,
        "channel": ChannelNameRouter({**routing.domains, "echo": EchoService.as_asgi()}),
    }
)
