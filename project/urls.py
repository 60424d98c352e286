from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from bus.views import metrics
from consumers import pages, routes
from consumers.signin import ThrottledLoginView, admin_login

urlpatterns = [
    path("", pages.shop, name="shop"),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="/"), name="logout"),
    # The JSON API, /healthz and /readyz: each declared once, above its view (consumers/routes.py).
    *routes.registry.urlpatterns(),
    path("metrics", metrics),
    # The operators' pages (staff only); their sign-in throttled with the shop's (consumers.signin).
    path("admin/login/", admin_login),
    path("admin/", admin.site.urls),
]

# Django's own error pages, as problem details under /api/ (consumers.problems).
handler400 = "consumers.problems.bad_request"
handler403 = "consumers.problems.permission_denied_view"
handler404 = "consumers.problems.not_found"
handler500 = "consumers.problems.server_error_view"
