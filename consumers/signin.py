"""Sign-in with failures throttled per account and per client address.

Failed attempts are counted in the `signin` cache, which every web process shares (Redis when
REDIS_URL is set; process memory in the one-process demo, where there is one web process).
Past the limit within the window, a sign-in is refused with 429 and Retry-After before the
password is even checked, so guessing costs the guesser the whole window. The admin's sign-in
(`admin_login`, at /admin/login/) is the same view with the admin's form and template, counted
in the same counters: a password guessed at one page is not guessed afresh at the other.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.views import LoginView
from django.core.cache import caches
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.urls import reverse

DEFAULTS = {"ACCOUNT": 5, "ADDRESS": 20, "WINDOW": 900}


def _limits() -> dict[str, int]:
    return {**DEFAULTS, **getattr(settings, "SIGNIN_THROTTLE", {})}


def client_address(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or behind the balancer the one it appended last."""
    if settings.BEHIND_PROXY:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return str(forwarded).rsplit(",", 1)[-1].strip()[:64]
    return str(request.META.get("REMOTE_ADDR", ""))[:64]


def _counters(request: HttpRequest) -> list[tuple[str, int]]:
    limits = _limits()
    username = str(request.POST.get("username", "")).strip().lower()[:150]
    counters = [(f"signin:address:{client_address(request)}", limits["ADDRESS"])]
    if username:
        counters.append((f"signin:account:{username}", limits["ACCOUNT"]))
    return counters


def blocked_for(request: HttpRequest) -> int:
    """Seconds until this account and address may try again; 0 when they may now."""
    cache = caches["signin"]
    now = time.time()
    waits = [0.0]
    for key, limit in _counters(request):
        if (cache.get(key) or 0) >= limit:
            waits.append(float(cache.get(f"{key}:until") or now + _limits()["WINDOW"]) - now)
    return max(1, round(max(waits))) if max(waits) > 0 else 0


def record_failure(request: HttpRequest) -> None:
    """Count one failed attempt against the account and the address, in a window from the first."""
    cache = caches["signin"]
    window = _limits()["WINDOW"]
    for key, _ in _counters(request):
        if cache.add(key, 0, timeout=window):
            cache.set(f"{key}:until", time.time() + window, timeout=window)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr: start again
            cache.add(key, 1, timeout=window)


class ThrottledLoginView(LoginView):
    """Django's LoginView, refusing with 429 while an account or address is over its limit."""

    template_name = "login.html"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        wait = blocked_for(request)
        if wait:
            initial = {"username": request.POST.get("username", "")[:150]}
            form = self.get_form_class()(request, initial=initial)
            # An unbound form, so the password is never checked; its errors carry the refusal.
            form.full_clean()
            form.cleaned_data = {}
            minutes = max(1, round(wait / 60))
            form.add_error(
                None,
                f"Too many failed sign-ins for this account or from this address: try again in "
                f"about {minutes} minute{'s' if minutes != 1 else ''}.",
            )
            response = self.render_to_response(self.get_context_data(form=form), status=429)
            response["Retry-After"] = str(wait)
            return response
        response = super().post(request, *args, **kwargs)
        if response.status_code == 200:  # the form came back with errors: a failed attempt
            record_failure(request)
        return response


def admin_login(request: HttpRequest) -> HttpResponseBase:
    """The admin's sign-in: Django's AdminSite.login, with ThrottledLoginView for its LoginView."""
    site = admin.site
    index = reverse("admin:index", current_app=site.name)
    if request.method == "GET" and site.has_permission(request):
        return HttpResponseRedirect(index)
    context: dict[str, Any] = {
        **site.each_context(request),
        "title": "Log in",
        "subtitle": None,
        "app_path": request.get_full_path(),
        "username": request.user.get_username(),
    }
    if REDIRECT_FIELD_NAME not in request.GET and REDIRECT_FIELD_NAME not in request.POST:
        context[REDIRECT_FIELD_NAME] = index
    request.current_app = site.name
    view = ThrottledLoginView.as_view(
        template_name="admin/login.html", authentication_form=AdminAuthenticationForm, extra_context=context
    )
    return view(request)
