"""A Content-Security-Policy on every response (Django 5.2 has none built in; 6.0 will).

The page loads its one script and one stylesheet from this origin, talks to /api/ and /ws/ on
this origin (`connect-src 'self'` covers same-origin ws: and wss: in CSP Level 3 browsers), and
has nothing inline: so injected markup cannot run script, load from elsewhere, post a form
elsewhere or be framed. X-Frame-Options is Django's XFrameOptionsMiddleware (DENY by default),
for browsers that do not know `frame-ancestors`.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

from bus.middleware import InlineMiddleware

#: settings.EDGE_CONTENT_SECURITY_POLICY overrides it; an empty string sends none.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class ContentSecurityPolicyMiddleware(InlineMiddleware):
    """Add the policy to every response that does not set its own (inline: no thread hop)."""

    def after(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        policy: str = getattr(settings, "EDGE_CONTENT_SECURITY_POLICY", POLICY)
        if policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy
        return response
