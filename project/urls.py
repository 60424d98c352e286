from django.urls import path

from consumers import views

urlpatterns = [
    path("healthz", views.healthz),
]
