"""Staff API for the gateway's configuration: upstreams and model routes (`/api/v1/admin/…`).
An upstream's API key is write-only: answers say whether one is set, never any part of it."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import StrictSerializer
from billing_site.api.staff import StaffMayChange
from gateway import selectors, services
from gateway.models import ModelRoute, OnDisconnect, Upstream

_ACTIONS = {"GET": "view", "HEAD": "view", "OPTIONS": "view", "POST": "add"}


class _StaffConfigApi(APIView):
    """Staff who may view the model read (Support too); adding and changing need Billing admins' rights."""

    permission_classes = [IsAuthenticated, StaffMayChange]
    model_name: str

    @property
    def required_permission(self) -> str:
        return f"gateway.{_ACTIONS.get(self.request.method or '', 'change')}_{self.model_name}"


# --- Upstreams -------------------------------------------------------------------------------------------


class UpstreamInput(StrictSerializer):
    name = serializers.SlugField(max_length=80, help_text="Unique; letters, digits, - and _.")
    base_url = serializers.CharField(max_length=services.BASE_URL_MAX_LENGTH, help_text="http(s), up to and including /v1.")
    api_key = serializers.CharField(
        max_length=services.API_KEY_MAX_LENGTH,
        allow_blank=True,
        write_only=True,
        help_text="The upstream's own API key: stored encrypted, never shown again. Empty for an upstream that takes none.",
    )
    connect_timeout_seconds = serializers.FloatField(min_value=0.1, max_value=60, required=False)
    timeout_seconds = serializers.FloatField(
        min_value=0.1, max_value=600, required=False, help_text="Longest wait for the first byte."
    )
    idle_timeout_seconds = serializers.FloatField(
        min_value=0.1, max_value=600, required=False, help_text="Longest wait between two chunks of a stream."
    )
    max_concurrency = serializers.IntegerField(
        min_value=1, max_value=100_000, required=False, help_text="Calls in flight at once, all servers together."
    )
    sandbox = serializers.BooleanField(required=False, help_text="A free test server: test-mode keys may call it.")
    active = serializers.BooleanField(required=False)

    class Meta:
        ref_name = "UpstreamInput"


class UpstreamOutput(serializers.Serializer[Any]):
    name = serializers.CharField()
    base_url = serializers.CharField()
    api_key_set = serializers.SerializerMethodField(help_text="Whether a key is stored; the key itself is never shown.")
    connect_timeout_seconds = serializers.FloatField()
    timeout_seconds = serializers.FloatField()
    idle_timeout_seconds = serializers.FloatField()
    max_concurrency = serializers.IntegerField()
    sandbox = serializers.BooleanField()
    active = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    class Meta:
        ref_name = "Upstream"

    def get_api_key_set(self, upstream: Upstream) -> bool:
        return bool(upstream.api_key_encrypted)


UPSTREAM_EXAMPLE = {
    "name": "openai",
    "base_url": "https://api.openai.com/v1",
    "api_key_set": True,
    "connect_timeout_seconds": 5.0,
    "timeout_seconds": 60.0,
    "idle_timeout_seconds": 30.0,
    "max_concurrency": 100,
    "sandbox": False,
    "active": True,
    "created_at": "2026-03-01T09:30:00Z",
    "updated_at": "2026-03-01T09:30:00Z",
}


class UpstreamListApi(_StaffConfigApi):
    model_name = "upstream"

    @extend_schema(
        responses={200: UpstreamOutput(many=True)},
        tags=["staff"],
        summary="Staff: list the gateway's upstreams",
        description="Every upstream, active or not, by name. `api_key_set` says whether a key is stored; the key "
        "itself is never shown. Staff who may view the gateway's configuration.",
        examples=[OpenApiExample("Upstreams", value=[UPSTREAM_EXAMPLE], response_only=True)],
    )
    def get(self, request: Request) -> Response:
        return Response(UpstreamOutput(selectors.upstream_list(), many=True).data)

    @extend_schema(
        request=UpstreamInput,
        responses={201: UpstreamOutput},
        tags=["staff"],
        summary="Staff: add an upstream",
        description="An OpenAI-compatible server the gateway may call: `base_url` (http or https, up to and including "
        "`/v1`; no credentials in it) and its `api_key`, stored encrypted and never shown again. Optional timeouts "
        "(seconds), `max_concurrency`, `sandbox` (a free test server that test-mode keys may call) and `active`. "
        "A name already taken is refused (400). Staff with the gateway's change rights only.",
        examples=[
            OpenApiExample(
                "OpenAI",
                value={"name": "openai", "base_url": "https://api.openai.com/v1", "api_key": "sk-…", "timeout_seconds": 60},
                request_only=True,
            ),
            OpenApiExample("Added", value=UPSTREAM_EXAMPLE, response_only=True, status_codes=["201"]),
        ],
    )
    def post(self, request: Request) -> Response:
        data = UpstreamInput(data=request.data)
        data.is_valid(raise_exception=True)
        upstream = services.upstream_create(staff_id=request.user.pk, **data.validated_data)
        return Response(UpstreamOutput(upstream).data, status=status.HTTP_201_CREATED)


class UpstreamDetailApi(_StaffConfigApi):
    model_name = "upstream"

    @extend_schema(
        responses={200: UpstreamOutput},
        tags=["staff"],
        summary="Staff: read an upstream",
        description="One upstream by name; 404 when there is none. The key is never shown, only whether one is set.",
        examples=[OpenApiExample("Upstream", value=UPSTREAM_EXAMPLE, response_only=True)],
    )
    def get(self, request: Request, name: str) -> Response:
        return Response(UpstreamOutput(selectors.upstream_get(name=name)).data)

    @extend_schema(
        request=UpstreamInput(partial=True),
        responses={200: UpstreamOutput},
        tags=["staff"],
        summary="Staff: change an upstream",
        description="Changes the fields you send and keeps the others. `api_key` replaces the stored key (an empty "
        "string removes it); leave it out to keep the key. `active: false` takes the upstream out of every route. "
        "Every gateway server uses the change from its next request on. Staff with the gateway's change rights only.",
        examples=[
            OpenApiExample("Rotate the key", value={"api_key": "sk-…new"}, request_only=True),
            OpenApiExample("Take it out of service", value={"active": False}, request_only=True),
            OpenApiExample("Changed", value={**UPSTREAM_EXAMPLE, "active": False}, response_only=True),
        ],
    )
    def patch(self, request: Request, name: str) -> Response:
        upstream = selectors.upstream_get(name=name)
        data = UpstreamInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        services.upstream_update(upstream=upstream, staff_id=request.user.pk, **data.validated_data)
        return Response(UpstreamOutput(upstream).data)


# --- Model routes ----------------------------------------------------------------------------------------


class RouteUpstreamItem(StrictSerializer):
    upstream = serializers.CharField(max_length=80, help_text="An upstream's name.")
    upstream_model = serializers.CharField(max_length=services.NAME_MAX_LENGTH, help_text="The model name that upstream expects.")

    class Meta:
        ref_name = "RouteUpstream"


class ModelRouteInput(StrictSerializer):
    model = serializers.CharField(max_length=services.NAME_MAX_LENGTH, help_text="The public model name customers send.")
    service = serializers.CharField(max_length=80, help_text="The slug of the service that prices its calls.")
    upstreams = serializers.ListField(
        child=RouteUpstreamItem(), max_length=50, help_text="Tried in this order: the first, then the fallbacks."
    )
    on_disconnect = serializers.ChoiceField(
        choices=OnDisconnect.choices,
        required=False,
        help_text="When a client hangs up mid-stream: `drain` (default) keeps reading upstream and charges what it "
        "reports; `cancel` closes it and charges what was delivered, counted locally.",
    )
    default_max_tokens = serializers.IntegerField(
        min_value=1, max_value=1_000_000, required=False, help_text="Sent upstream when the client sets no maximum."
    )
    active = serializers.BooleanField(required=False)

    class Meta:
        ref_name = "ModelRouteInput"

    def validate_upstreams(self, items: list[dict[str, str]]) -> list[services.RouteUpstreamSpec]:
        return [services.RouteUpstreamSpec(upstream=item["upstream"], upstream_model=item["upstream_model"]) for item in items]


class ModelRouteOutput(serializers.Serializer[Any]):
    model = serializers.CharField()
    service = serializers.CharField(source="service.slug")
    calc_method = serializers.CharField(source="service.calc_method")
    upstreams = serializers.SerializerMethodField()
    on_disconnect = serializers.CharField()
    default_max_tokens = serializers.IntegerField()
    active = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    class Meta:
        ref_name = "ModelRoute"

    @extend_schema_field(RouteUpstreamItem(many=True))
    def get_upstreams(self, route: ModelRoute) -> list[dict[str, Any]]:
        return [{"upstream": link.upstream.name, "upstream_model": link.upstream_model} for link in route.upstreams.all()]


MODEL_ROUTE_EXAMPLE = {
    "model": "gpt-4o-mini",
    "service": "gpt-4o-mini",
    "calc_method": "TOKENS",
    "upstreams": [
        {"upstream": "openai", "upstream_model": "gpt-4o-mini"},
        {"upstream": "azure-east", "upstream_model": "gpt-4o-mini-2024-07-18"},
    ],
    "on_disconnect": "drain",
    "default_max_tokens": 4096,
    "active": True,
    "created_at": "2026-03-01T09:30:00Z",
    "updated_at": "2026-03-01T09:30:00Z",
}


class ModelRouteListApi(_StaffConfigApi):
    model_name = "modelroute"

    @extend_schema(
        responses={200: ModelRouteOutput(many=True)},
        tags=["staff"],
        summary="Staff: list the gateway's model routes",
        description="Every public model name, active or not, with the service that prices it and its upstreams in "
        "the order they are tried. Staff who may view the gateway's configuration.",
        examples=[OpenApiExample("Routes", value=[MODEL_ROUTE_EXAMPLE], response_only=True)],
    )
    def get(self, request: Request) -> Response:
        return Response(ModelRouteOutput(selectors.model_route_list(), many=True).data)

    @extend_schema(
        request=ModelRouteInput,
        responses={201: ModelRouteOutput},
        tags=["staff"],
        summary="Staff: add a model route",
        description="A public `model` name customers send to `/v1/…`, the `service` (slug) that prices its calls "
        "(a TOKENS service for chat, completions and embeddings; IMAGE_RESOLUTION or REQUEST for images), and "
        "`upstreams`: each an upstream's name with the model name it expects, tried in this order. Optional: "
        "`on_disconnect` (`drain` or `cancel`), `default_max_tokens`, `active`. An unknown service or upstream, an "
        "upstream listed twice, an empty list or a model name already routed is refused (400). Staff with the "
        "gateway's change rights only.",
        examples=[
            OpenApiExample(
                "A model with a fallback",
                value={
                    "model": "gpt-4o-mini",
                    "service": "gpt-4o-mini",
                    "upstreams": MODEL_ROUTE_EXAMPLE["upstreams"],
                    "on_disconnect": "drain",
                    "default_max_tokens": 4096,
                },
                request_only=True,
            ),
            OpenApiExample("Added", value=MODEL_ROUTE_EXAMPLE, response_only=True, status_codes=["201"]),
        ],
    )
    def post(self, request: Request) -> Response:
        data = ModelRouteInput(data=request.data)
        data.is_valid(raise_exception=True)
        route = services.model_route_create(staff_id=request.user.pk, **data.validated_data)
        return Response(ModelRouteOutput(route).data, status=status.HTTP_201_CREATED)


class ModelRouteDetailApi(_StaffConfigApi):
    model_name = "modelroute"

    @extend_schema(
        responses={200: ModelRouteOutput},
        tags=["staff"],
        summary="Staff: read a model route",
        description="One route by its public model name (which may contain `/`); 404 when there is none.",
        examples=[OpenApiExample("Route", value=MODEL_ROUTE_EXAMPLE, response_only=True)],
    )
    def get(self, request: Request, model: str) -> Response:
        return Response(ModelRouteOutput(selectors.model_route_get(model=model)).data)

    @extend_schema(
        request=ModelRouteInput(partial=True),
        responses={200: ModelRouteOutput},
        tags=["staff"],
        summary="Staff: change a model route",
        description="Changes the fields you send and keeps the others; `upstreams` replaces the whole list (in the "
        "new order). `active: false` answers the model as unknown to customers. Every gateway server uses the "
        "change from its next request on. Staff with the gateway's change rights only.",
        examples=[
            OpenApiExample(
                "Swap the order of the upstreams",
                value={
                    "upstreams": [
                        {"upstream": "azure-east", "upstream_model": "gpt-4o-mini-2024-07-18"},
                        {"upstream": "openai", "upstream_model": "gpt-4o-mini"},
                    ]
                },
                request_only=True,
            ),
            OpenApiExample("Changed", value=MODEL_ROUTE_EXAMPLE, response_only=True),
        ],
    )
    def patch(self, request: Request, model: str) -> Response:
        route = selectors.model_route_get(model=model)
        data = ModelRouteInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        route = services.model_route_update(route=route, staff_id=request.user.pk, **data.validated_data)
        return Response(ModelRouteOutput(selectors.model_route_get(model=route.model)).data)
