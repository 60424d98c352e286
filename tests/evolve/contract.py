"""A test domain in two versions, for rolling deploys: EVOLVE_VERSION=2 is version 1 with only
additive changes (a new optional argument, a new result field, a new event field, a new method).

Each process declares one of them, as during a deploy each process runs one release.
"""

from __future__ import annotations

import os

from bus import Contract, Event, Schema, rpc

NEW = os.environ.get("EVOLVE_VERSION", "1") == "2"


class Greeting(Schema):
    text: str
    if NEW:
        language: str = "en"


class Greeted(Schema):
    name: str
    if NEW:
        mood: str = "glad"


class Evolve(Contract, name="evolve"):
    """Test-only service that changes between two versions."""

    greeted = Event(Greeted)

    if NEW:

        @rpc(read=True)
        async def greet(self, *, name: str, polite: bool = False) -> Greeting: ...

        @rpc(read=True)
        async def farewell(self, *, name: str) -> str: ...

    else:

        @rpc(read=True)
        async def greet(self, *, name: str) -> Greeting: ...
