"""The page at /: plain Django templates; a small script keeps it live."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie


@ensure_csrf_cookie
def shop(request: HttpRequest) -> HttpResponse:
    """The shop: products with live stock, a cart, orders with their saga steps, the system panel."""
    customer = request.user.get_username() if request.user.is_authenticated else None
    return render(request, "shop.html", {"customer": customer})
