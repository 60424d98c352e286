"""The presentation event log, as pages resume from it: newest first, read-only."""

from __future__ import annotations

from django.contrib import admin
from django.utils.safestring import SafeString

from bus.admin import ReadOnlyAdmin, shown_json

from .models import Epoch, Event

admin.site.site_header = admin.site.site_title = "django-distributed operations"


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    """Each domain event the presentation worker logged, by offset, with its topic and data."""

    list_display = ("id", "created_at", "topic", "kind", "message_id")
    list_filter = ("kind",)
    search_fields = ("topic", "kind", "message_id")
    ordering = ("-id",)
    fields = readonly_fields = ("id", "created_at", "topic", "kind", "message_id", "shown_data")

    @admin.display(description="data")
    def shown_data(self, event: Event) -> SafeString:
        return shown_json(event.data)


@admin.register(Epoch)
class EpochAdmin(ReadOnlyAdmin):
    """The log's identity, and the offset up to which it was cleaned up."""

    list_display = ("id", "created_at", "purged_through")
