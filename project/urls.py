from django.contrib.auth import views as auth_views
from django.urls import path

from bus.views import metrics
from consumers import api, openapi, pages

urlpatterns = [
    path("", pages.shop, name="shop"),
    path("accounts/login/", auth_views.LoginView.as_view(template_name="login.html"), name="login"),
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

handler404 = "consumers.problems.not_found"
