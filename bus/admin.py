"""The admin pages an operator opens when something is wrong: dead letters (replay, purge), the
read-only switches, and each domain's outbox and inbox, found among the installed models made
from the bus's abstract ones, so a new domain has its pages without code.

Read-mostly: envelopes, bodies and ids are shown, never edited. `RoutedAdmin` reads and writes
each model in its own domain's database through `alias_for`, as the rest of the bus does; the
project's DomainRouter sends the admin's default-manager queries to the same place, and naming the
alias keeps these pages right in a project without it. A sharded app is not one table: alias_for
refuses to list it, naming its shards.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django import forms
from django.apps import apps
from django.contrib import admin, messages
from django.db.models import F, Model, QuerySet
from django.db.models.expressions import OrderBy
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from . import deadletters
from .contracts import contracts
from .databases import alias_for
from .exceptions import BusError
from .models import AbstractProcessedMessage, DeadLetter, DomainMode
from .modes import set_read_only
from .outbox import AbstractOutboxMessage
from .threads import run_sync

__all__ = ["ReadOnlyAdmin", "RoutedAdmin", "pending_filter", "pending_first", "shown_json", "shown_text"]


class RoutedAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """A ModelAdmin whose reads and writes go to its model's own database (`alias_for`)."""

    def alias(self, *, write: bool) -> str:
        return alias_for(self.model._meta.app_label, write=write)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).using(self.alias(write=False))

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        obj.save(using=self.alias(write=True))

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        obj.delete(using=self.alias(write=True))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        queryset.using(self.alias(write=True)).delete()


class ReadOnlyAdmin(RoutedAdmin):
    """Rows to look at, not to edit: they are written by the code paths that own them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


def shown_json(value: Any) -> SafeString:
    """A JSON value as indented text, escaped."""
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


def shown_text(text: str, limit: int = 0) -> str:
    """The first line of `text`, cut to `limit` characters (0: whole)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return f"{line[:limit]}…" if limit and len(line) > limit else line


def pending_filter(field: str, title: str, pending: str, done: str) -> type[admin.SimpleListFilter]:
    """A list filter on whether timestamp `field` is still empty (`pending`) or set (`done`)."""

    class Pending(admin.SimpleListFilter):
        parameter_name = field

        def lookups(self, request: HttpRequest, model_admin: Any) -> Sequence[tuple[str, str]]:
            return [("pending", pending), ("done", done)]

        def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
            if self.value() in ("pending", "done"):
                return queryset.filter(**{f"{field}__isnull": self.value() == "pending"})
            return queryset

    Pending.title = title
    return Pending


def pending_first(field: str) -> OrderBy:
    """Rows whose `field` is empty first, then the most recently done."""
    return F(field).desc(nulls_first=True)


# -- dead letters -------------------------------------------------------------------------------


def replay_letter(letter_id: int) -> DeadLetter | None:
    """Send a dead letter again (as `bus deadletters replay`); None if it was replayed already.
    A letter the bus did not take stays waiting, and the error is raised."""
    letter = deadletters.take_for_replay(letter_id)
    if letter is None:
        return None
    try:
        run_sync(deadletters.send_again, letter.channel, deadletters.fresh_attempt(letter.envelope))
    except BaseException:
        DeadLetter.objects.using(alias_for("bus", write=True)).filter(id=letter_id).update(replayed_at=None)
        raise
    return letter


@admin.register(DeadLetter)
class DeadLetterAdmin(RoutedAdmin):
    """Waiting letters first; replay sends them again with the same message id, purge deletes."""

    list_display = ("id", "target", "channel", "attempts", "created_at", "replayed_at", "short_error")
    list_filter = (pending_filter("replayed_at", "replayed", "waiting", "replayed"), "target")
    search_fields = ("message_id", "target", "error")
    ordering = (pending_first("replayed_at"), "-id")
    fields = readonly_fields = (
        "message_id", "target", "channel", "attempts", "created_at", "replayed_at",
        "error", "shown_envelope", "shown_traceback",
    )  # fmt: skip
    actions = ["replay"]

    @admin.display(description="error")
    def short_error(self, letter: DeadLetter) -> str:
        return shown_text(letter.error, 100)

    @admin.display(description="envelope")
    def shown_envelope(self, letter: DeadLetter) -> SafeString:
        return shown_json(letter.envelope)

    @admin.display(description="traceback")
    def shown_traceback(self, letter: DeadLetter) -> SafeString:
        return format_html("<pre>{}</pre>", letter.traceback)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False  # an envelope is evidence; replay sends it as it was

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("bus.change_deadletter"))

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        found = super().get_actions(request)
        delete = found.get("delete_selected")
        if delete is not None:  # Django's, with its confirmation page: purge
            found["delete_selected"] = (delete[0], delete[1], "Purge selected dead letters")
        return found

    @admin.action(description="Replay selected dead letters", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        sent: list[str] = []
        already: list[str] = []
        for letter_id in queryset.order_by("id").values_list("id", flat=True):
            try:
                letter = replay_letter(letter_id)
            except BusError as exc:
                self.message_user(request, f"Dead letter {letter_id} was not replayed: {exc}", messages.ERROR)
                break
            (sent if letter else already).append(str(letter_id))
        if sent:
            self.message_user(request, f"Replayed {len(sent)} dead letter(s): {', '.join(sent)}.")
        if already:
            self.message_user(request, f"Replayed already: {', '.join(already)}.", messages.WARNING)


# -- read-only switches -------------------------------------------------------------------------


class DomainModeForm(forms.ModelForm):  # type: ignore[type-arg]
    """A switch for a service this process knows (`manage.py bus services`)."""

    class Meta:
        model = DomainMode
        fields = ("domain", "read_only", "reason")

    def clean_domain(self) -> str:
        domain = str(self.cleaned_data["domain"])
        if domain not in contracts():
            known = ", ".join(sorted(contracts()))
            raise forms.ValidationError(f"No service is named {domain!r}; the services are {known}.")
        return domain


@admin.register(DomainMode)
class DomainModeAdmin(RoutedAdmin):
    """Read-only on and off, as `manage.py bus readonly`: workers follow within the mode cache time."""

    form = DomainModeForm
    list_display = ("domain", "read_only", "reason", "updated_at")
    list_editable = ("read_only", "reason")
    ordering = ("domain",)
    actions = ["switch_on", "switch_off"]

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> tuple[str, ...]:
        return ("domain", "updated_at") if obj else ("updated_at",)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False  # read-write is a switch turned off, not a missing row

    def save_model(self, request: HttpRequest, obj: DomainMode, form: Any, change: bool) -> None:
        set_read_only(obj.domain, obj.read_only, obj.reason)

    @admin.action(description="Switch read-only on", permissions=["change"])
    def switch_on(self, request: HttpRequest, queryset: QuerySet[DomainMode]) -> None:
        self._switch(request, queryset, True)

    @admin.action(description="Switch read-only off", permissions=["change"])
    def switch_off(self, request: HttpRequest, queryset: QuerySet[DomainMode]) -> None:
        self._switch(request, queryset, False)

    def _switch(self, request: HttpRequest, queryset: QuerySet[DomainMode], on: bool) -> None:
        domains = [(mode.domain, mode.reason) for mode in queryset]
        for domain, reason in domains:
            set_read_only(domain, on, reason)
        state = "read-only" if on else "read-write"
        names = ", ".join(domain for domain, _ in domains)
        self.message_user(request, f"{names}: {state}; workers follow within the mode cache time.")


# -- each domain's outbox and inbox -------------------------------------------------------------


class OutboxAdmin(ReadOnlyAdmin):
    """Events waiting for the relay first, with their attempts, next attempt and last error."""

    list_display = (
        "id", "target", "created_at", "attempts", "next_attempt_at", "delivered_at", "short_error",
    )  # fmt: skip
    list_filter = (pending_filter("delivered_at", "delivered", "waiting", "delivered"), "target")
    search_fields = ("id", "target", "correlation_id")
    ordering = (pending_first("delivered_at"), "created_at")
    fields = readonly_fields = (
        "id", "target", "correlation_id", "created_at", "attempts", "next_attempt_at",
        "delivered_at", "last_error", "shown_body",
    )  # fmt: skip

    @admin.display(description="last error")
    def short_error(self, row: AbstractOutboxMessage) -> str:
        return shown_text(row.last_error, 100)

    @admin.display(description="body")
    def shown_body(self, row: AbstractOutboxMessage) -> SafeString:
        return shown_json(row.body)


class InboxAdmin(ReadOnlyAdmin):
    """The message ids a domain has processed: a redelivery of one of these is not run again."""

    list_display = ("message_id", "processed_at")
    search_fields = ("message_id",)
    ordering = ("-processed_at",)


def register_domain_tables(site: admin.AdminSite) -> None:
    """A page for every installed outbox and inbox model that has none yet."""
    for model in apps.get_models():
        if site.is_registered(model):
            continue
        if issubclass(model, AbstractOutboxMessage):
            site.register(model, OutboxAdmin)
        elif issubclass(model, AbstractProcessedMessage):
            site.register(model, InboxAdmin)


register_domain_tables(admin.site)
