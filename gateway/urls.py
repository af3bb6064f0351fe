"""The gateway's URLs (served by the ASGI process, gateway/asgi.py; the web process does not route /v1/)."""

from django.conf import settings
from django.urls import path, re_path

from billing_site import health
from gateway import sandbox, views

urlpatterns = [
    path("v1/chat/completions", views.chat_completions),
    path("v1/completions", views.completions),
    path("v1/embeddings", views.embeddings),
    path("v1/images/generations", views.images_generations),
    path("v1/models", views.models),
    re_path(r"^v1/(?P<path>.*)$", views.not_found),
    path("healthz", health.healthz),
]
if settings.GATEWAY_SANDBOX_ENABLED:
    urlpatterns.append(re_path(r"^sandbox/v1/(?P<path>.*)$", sandbox.sandbox_upstream))
