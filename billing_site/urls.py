from django.contrib import admin
from django.http import JsonResponse
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from accounts import api as accounts_api
from billing_site import health, metrics
from billing_site.errors import error_body
from dashboard.forms import AdminLoginForm
from payments import admin as payments_admin
from payments import views as payments_views

api_v1: list[URLPattern | URLResolver] = [
    # The metered paths first: Django tries patterns in order, and usage/ is the hot one.
    path("", include("metering.urls")),
    path("auth/register/", accounts_api.RegisterApi.as_view(), name="register"),
    path("auth/token/", accounts_api.TokenObtainApi.as_view(), name="token"),
    path("auth/token/refresh/", accounts_api.TokenRefreshApi.as_view(), name="token-refresh"),
    path("auth/token/blacklist/", accounts_api.TokenBlacklistApi.as_view(), name="token-blacklist"),
    path("me/", accounts_api.MeApi.as_view(), name="me"),
    path("api-keys/", accounts_api.ApiKeyListCreateApi.as_view(), name="api-keys"),
    path("api-keys/<int:api_key_id>/", accounts_api.ApiKeyDetailApi.as_view(), name="api-key"),
    path("billing-details/", accounts_api.BillingDetailsApi.as_view(), name="billing-details"),
    path("", include("payments.urls")),
    path("", include("statements.urls")),
    path("", include("gateway.api_urls")),
]

admin.site.login_form = AdminLoginForm  # throttled against password guessing, like the dashboard's

urlpatterns = [
    path("api/v1/", include((api_v1, "api"), namespace="v1")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("admin/reconciliation/", admin.site.admin_view(payments_admin.reconciliation_view), name="admin-reconciliation"),
    path("admin/", admin.site.urls),
    path("sandbox/checkout/<str:token>/", payments_views.sandbox_checkout, name="sandbox-checkout"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("", include("dashboard.urls")),
]


def _json_error(code: str, message: str, status: int):
    def view(request, exception=None):
        return JsonResponse(error_body(code, message), status=status)

    return view


# Unknown URLs and crashes outside DRF still answer the API's error body.
handler404 = _json_error("not_found", "Not found.", 404)
handler500 = _json_error("internal_error", "Something went wrong on our side.", 500)
