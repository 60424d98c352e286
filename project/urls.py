from django.contrib.auth import views as auth_views
from django.urls import path

from bus.views import metrics
from consumers import api, openapi, pages
from consumers.signin import ThrottledLoginView

urlpatterns = [
    path("", pages.shop, name="shop"),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="/"), name="logout"),
    path("api/products", api.products),
    path("api/products/<str:sku>", api.product),
    path("api/orders", api.place_order),
    path("api/orders/<str:order_id>", api.order),
    path("api/customers/<str:customer_id>/orders", api.customer_orders),
    path("api/customers/<str:customer_id>/balance", api.balance),
    path("api/events", api.event_log),
    path("api/system", api.system),
    path("api/openapi.json", openapi.openapi_json),
    path("healthz", api.healthz),
    path("readyz", api.readyz),
    path("metrics", metrics),
]

# Django's own error pages, as problem details under /api/ (consumers.problems).
handler400 = "consumers.problems.bad_request"
handler403 = "consumers.problems.permission_denied_view"
handler404 = "consumers.problems.not_found"
handler500 = "consumers.problems.server_error_view"
