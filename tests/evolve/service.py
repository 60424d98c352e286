from __future__ import annotations

from bus import Service, subscribe
from tests.echo.service import _append

from .contract import NEW, Evolve, Greeted, Greeting

if NEW:

    class EvolveService(Service, contract=Evolve):
        def greet(self, *, name: str, polite: bool = False) -> Greeting:
            return Greeting(text=f"{'Good day' if polite else 'Hi'}, {name}", language="en")

        def farewell(self, *, name: str) -> str:
            return f"Bye, {name}"

        @subscribe("evolve.greeted")
        def on_greeted(self, event: Greeted) -> None:
            _append("greeted", f"v2:{event.name}:{event.mood}")

else:

    class EvolveService(Service, contract=Evolve):  # type: ignore[no-redef]
        def greet(self, *, name: str) -> Greeting:
            return Greeting(text=f"Hi, {name}")

        @subscribe("evolve.greeted")
        def on_greeted(self, event: Greeted) -> None:
            _append("greeted", f"v1:{event.name}")
