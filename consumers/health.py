"""What operators and orchestrators ask: is the process up, can it work, and how the bus looks now."""

from __future__ import annotations

from channels.layers import InMemoryChannelLayer
from django.http import HttpRequest, HttpResponse, JsonResponse

import bus
from bus.client import default_bus
from bus.status import SystemStatus, astatus

from .problems import problem
from .routes import ANYONE, Ok, Operation
from .schemas import Health, Readiness


@Operation(
    "GET",
    "/api/system",
    "getSystemStatus",
    tag="operations",
    summary="Live workers, queue depth and read-only reason per domain",
    security=ANYONE,
    ok=Ok("The bus as it is now.", SystemStatus),
    errors={503: "Redis cannot be reached."},
)
async def system(request: HttpRequest) -> HttpResponse:
    return JsonResponse(await astatus())


@Operation(
    "GET",
    "/healthz",
    "health",
    tag="operations",
    summary="The process is up and serving HTTP",
    security=ANYONE,
    ok=Ok("Up.", Health),
)
async def healthz(request: HttpRequest) -> HttpResponse:
    """The process is up and serving HTTP; whether it can do its work is /readyz."""
    return JsonResponse({"status": "ok"})


@Operation(
    "GET",
    "/readyz",
    "readiness",
    tag="operations",
    summary="Redis answers and every domain has a live worker",
    security=ANYONE,
    ok=Ok("Ready: live workers per domain.", Readiness),
    errors={503: "Not ready: Redis is unreachable, or `missing` names domains with no worker."},
)
async def readyz(request: HttpRequest) -> HttpResponse:
    """Ready when Redis answers and every domain has a live worker; the body says what is missing."""
    try:
        report = await astatus()
    except bus.BusError as error:
        return problem(503, "Not ready", error.message, retry_after=5)
    missing = [row["domain"] for row in report["domains"] if not row["workers"]]
    if missing:
        return problem(503, "Not ready", _start_workers(missing), retry_after=5, missing=missing)
    return JsonResponse(
        {"status": "ready", "domains": {row["domain"]: len(row["workers"]) for row in report["domains"]}}
    )


def _start_workers(missing: list[str]) -> str:
    """What to do when no worker serves `missing`: `runworker` helps only when the layer is shared."""
    names, command = ", ".join(missing), f"manage.py runworker {' '.join(missing)}"
    if isinstance(default_bus.layer, InMemoryChannelLayer):
        return (
            f"No worker serves {names} in this process. The channel layer is in memory (REDIS_URL is "
            f"not set), so a `{command}` in another process cannot reach this one: serve the site with "
            f"`manage.py up`, which runs every domain's worker in the web process (runserver and daphne "
            f"alone run none), or set REDIS_URL for every process and start `{command}`."
        )
    return f"No live worker serves {names}: start `{command}`."
