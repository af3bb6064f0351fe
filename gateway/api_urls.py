"""The gateway's staff API, under /api/v1/ (the customer-facing /v1/ endpoints are routed elsewhere)."""

from django.urls import path

from gateway import api

urlpatterns = [
    path("admin/upstreams/", api.UpstreamListApi.as_view(), name="admin-upstreams"),
    path("admin/upstreams/<str:name>/", api.UpstreamDetailApi.as_view(), name="admin-upstream"),
    path("admin/models/", api.ModelRouteListApi.as_view(), name="admin-models"),
    # A public model name may contain slashes (`meta-llama/Llama-3-70b`).
    path("admin/models/<path:model>/", api.ModelRouteDetailApi.as_view(), name="admin-model"),
]
