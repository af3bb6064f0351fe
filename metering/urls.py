from django.urls import path

from metering import api, subscriptions_api

urlpatterns = [
    path("services/", api.ServiceListApi.as_view(), name="services"),
    path("usage/", api.UsageApi.as_view(), name="usage"),
    path("usage/batch/", api.UsageBatchApi.as_view(), name="usage-batch"),
    path("usage/summary/", api.UsageSummaryApi.as_view(), name="usage-summary"),
    path("usage/export.csv", api.UsageExportApi.as_view(), name="usage-export"),
    path("holds/", api.HoldCreateApi.as_view(), name="holds"),
    path("holds/<int:hold_id>/capture/", api.HoldCaptureApi.as_view(), name="hold-capture"),
    path("holds/<int:hold_id>/release/", api.HoldReleaseApi.as_view(), name="hold-release"),
    path("plans/", subscriptions_api.PlanListApi.as_view(), name="plans"),
    path("subscription/", subscriptions_api.SubscriptionApi.as_view(), name="subscription"),
    path("admin/services/", api.ServiceAdminApi.as_view(), name="admin-services"),
    path("admin/prices/", api.PriceAdminApi.as_view(), name="admin-prices"),
    path("admin/plans/", api.PlanAdminApi.as_view(), name="admin-plans"),
    path("admin/plans/<slug:slug>/", api.PlanAdminDetailApi.as_view(), name="admin-plan"),
]
