"""The presentation domain: it serves no calls; it follows other domains' events for the pages."""

from __future__ import annotations

from bus import Contract


class Presentation(Contract, name="presentation"):
    """Logs inventory and order events with cursors, and pushes them to browsers' sockets."""
