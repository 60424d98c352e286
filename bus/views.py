"""/metrics for the web process: Prometheus text, for allowed networks or a bearer token."""

from __future__ import annotations

import hmac
import ipaddress

from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .conf import bus_setting


def _allowed(request: HttpRequest) -> bool:
    token = bus_setting("METRICS_TOKEN")
    offered = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if token and offered and hmac.compare_digest(offered, str(token)):
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(
        address in ipaddress.ip_network(network) for network in bus_setting("METRICS_ALLOWED_NETWORKS")
    )


def metrics(request: HttpRequest) -> HttpResponse:
    """This process's metrics (see bus.metrics), if the caller is allowed to read them."""
    if not _allowed(request):
        return HttpResponse(
            "Metrics are served to BUS['METRICS_ALLOWED_NETWORKS'] or with "
            "'Authorization: Bearer <BUS[\\'METRICS_TOKEN\\']>'.\n",
            status=403,
            content_type="text/plain",
        )
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
