"""The sagas an operator looks at when orders hang: the open ones first, oldest first."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html_join
from django.utils.safestring import SafeString
from django.utils.timesince import timesince

from bus.admin import ReadOnlyAdmin, pending_filter, pending_first, shown_json, shown_text

from .models import Saga


@admin.register(Saga)
class SagaAdmin(ReadOnlyAdmin):
    """Each checkout run with its order's state and age, what it waits for and its last error."""

    list_display = (
        "order_id", "state", "age", "waiting", "attempts", "next_attempt_at", "lease_until",
        "finished_at", "short_error",
    )  # fmt: skip
    list_select_related = ("order",)
    list_filter = (pending_filter("finished_at", "finished", "open", "finished"), "order__state")
    search_fields = ("order__id", "order__customer_id", "order__correlation_id")
    ordering = (pending_first("finished_at"), "order__created_at")
    fields = readonly_fields = (
        "order_id", "state", "age", "customer", "correlation", "reason", "waiting", "attempts",
        "next_attempt_at", "lease_until", "finished_at", "last_error", "lines", "steps",
    )  # fmt: skip

    @admin.display(description="state", ordering="order__state")
    def state(self, saga: Saga) -> str:
        return saga.order.state

    @admin.display(description="age", ordering="order__created_at")
    def age(self, saga: Saga) -> str:
        return timesince(saga.order.created_at)

    @admin.display(description="waiting for")
    def waiting(self, saga: Saga) -> str:
        return saga.order.waiting

    @admin.display(description="customer")
    def customer(self, saga: Saga) -> str:
        return saga.order.customer_id

    @admin.display(description="correlation id")
    def correlation(self, saga: Saga) -> str:
        return saga.order.correlation_id

    @admin.display(description="reason")
    def reason(self, saga: Saga) -> str:
        return saga.order.reason

    @admin.display(description="last error")
    def short_error(self, saga: Saga) -> str:
        return shown_text(saga.last_error, 100)

    @admin.display(description="lines")
    def lines(self, saga: Saga) -> SafeString:
        return shown_json(saga.order.lines)

    @admin.display(description="steps")
    def steps(self, saga: Saga) -> SafeString:
        steps = saga.order.steps.order_by("at", "id")
        return format_html_join("", "<div>{} {} {}</div>", ((s.at, s.name, s.detail) for s in steps))
