"""Back office for the gateway's configuration: upstreams (the API key is write-only) and model routes
with their upstreams in order. The checks are the staff API's (gateway.services)."""

from typing import Any, cast

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest

from billing_site.admin import LabelledForm, LabelledInlineFormSet
from billing_site.errors import InvalidRequest
from gateway import services
from gateway.crypto import upstream_key_encrypt
from gateway.models import ModelRoute, RouteUpstream, Upstream
from metering.models import Service


def _checked(check: Any, *args: Any, **kwargs: Any) -> Any:
    """A service check's answer, or its refusal as a form error."""
    try:
        return check(*args, **kwargs)
    except InvalidRequest as refused:
        messages = [message for field_messages in refused.details.values() for message in field_messages]
        raise ValidationError(messages or [refused.message]) from refused


class UpstreamForm(LabelledForm):
    base_url = forms.CharField(
        label="Base URL",
        max_length=500,
        help_text="http(s), up to and including /v1, e.g. https://api.openai.com/v1. No credentials in it: use the API key.",
    )
    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        # Never rendered back, and marked so browsers do not fill in the staff member's own password.
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="The upstream's own key, stored encrypted and never shown again. Leave empty to keep the current key "
        "(or, when adding, for an upstream that takes none).",
    )
    remove_api_key = forms.BooleanField(label="Remove the stored API key", required=False)

    class Meta:
        model = Upstream
        fields = [
            "name",
            "base_url",
            "api_key",
            "remove_api_key",
            "connect_timeout_seconds",
            "timeout_seconds",
            "idle_timeout_seconds",
            "max_concurrency",
            "sandbox",
            "active",
        ]

    def clean_base_url(self) -> str:
        return _checked(services.base_url_clean, self.cleaned_data.get("base_url"))

    def clean_api_key(self) -> str:
        return _checked(services.upstream_key_clean, self.cleaned_data.get("api_key") or "")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or self.cleaned_data
        if cleaned.get("api_key") and cleaned.get("remove_api_key"):
            self.add_error("remove_api_key", "Give a new key or remove the stored one, not both.")
        return cleaned


@admin.register(Upstream)
class UpstreamAdmin(admin.ModelAdmin):
    form = UpstreamForm
    list_display = ["name", "base_url", "active", "sandbox", "key_stored", "max_concurrency", "timeout_seconds"]
    list_filter = ["active", "sandbox"]
    search_fields = ["name", "base_url"]
    readonly_fields = ["key_stored", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "base_url", "active", "sandbox"]}),
        ("Credentials", {"fields": ["key_stored", "api_key", "remove_api_key"]}),
        ("Limits", {"fields": ["connect_timeout_seconds", "timeout_seconds", "idle_timeout_seconds", "max_concurrency"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

    def get_fieldsets(self, request, obj=None):
        if obj is not None:
            return self.fieldsets
        # Adding: there is no stored key to show or remove yet, and no history.
        return [(None, self.fieldsets[0][1]), ("Credentials", {"fields": ["api_key"]}), self.fieldsets[2]]

    @admin.display(description="API key", boolean=True)
    def key_stored(self, upstream: Upstream) -> bool:
        return bool(upstream.api_key_encrypted)

    def save_model(self, request, obj, form, change):
        if form.cleaned_data.get("api_key"):
            obj.api_key_encrypted = upstream_key_encrypt(form.cleaned_data["api_key"])
        elif form.cleaned_data.get("remove_api_key"):
            obj.api_key_encrypted = ""
        super().save_model(request, obj, form, change)


class ModelRouteForm(LabelledForm):
    class Meta:
        model = ModelRoute
        fields = ["model", "service", "on_disconnect", "default_max_tokens", "active"]

    def clean_model(self) -> str:
        return _checked(services.model_name_clean, self.cleaned_data.get("model"), field="model")

    def clean_service(self) -> Service | None:
        service = self.cleaned_data.get("service")
        if service is not None:
            _checked(services.route_service_check, service)
        return service


class RouteUpstreamForm(LabelledForm):
    class Meta:
        model = RouteUpstream
        fields = ["position", "upstream", "upstream_model"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The admin wraps the select in its add/change links; a copied wrapper's `attrs` are not the
        # select's own, so a table row's select is named on the select itself.
        wrapper = self.fields["upstream"].widget
        select = cast(forms.Widget, getattr(wrapper, "widget", wrapper))
        select.attrs["aria-label"] = "Upstream"

    def clean_upstream_model(self) -> str:
        return _checked(services.model_name_clean, self.cleaned_data.get("upstream_model"), field="upstream_model")


class RouteUpstreamInline(admin.TabularInline):
    """The route's upstreams, tried by ascending position: the first, then the fallbacks."""

    model = RouteUpstream
    form = RouteUpstreamForm
    formset = LabelledInlineFormSet
    fields = ["position", "upstream", "upstream_model"]
    ordering = ["position", "id"]
    extra = 1
    min_num = 1

    def get_formset(self, request, obj=None, **kwargs):
        # A route with no upstream could serve nothing; the admin does not enforce min_num by itself.
        return super().get_formset(request, obj, validate_min=True, **kwargs)


@admin.register(ModelRoute)
class ModelRouteAdmin(admin.ModelAdmin):
    form = ModelRouteForm
    inlines = [RouteUpstreamInline]
    list_display = ["model", "service", "calc_method", "upstreams_in_order", "on_disconnect", "default_max_tokens", "active"]
    list_filter = ["active", "on_disconnect", "service__calc_method"]
    search_fields = ["model", "service__slug"]
    list_select_related = ["service"]
    readonly_fields = ["created_at", "updated_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelRoute]:
        links = RouteUpstream.objects.select_related("upstream").order_by("position", "id")
        return super().get_queryset(request).prefetch_related(Prefetch("upstreams", queryset=links))

    @admin.display(description="calculation", ordering="service__calc_method")
    def calc_method(self, route: ModelRoute) -> str:
        return route.service.calc_method

    @admin.display(description="upstreams, in order")
    def upstreams_in_order(self, route: ModelRoute) -> str:
        return " → ".join(f"{link.upstream.name} ({link.upstream_model})" for link in route.upstreams.all()) or "—"
