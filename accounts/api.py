"""REST API: sign-up, the caller's identity, API keys."""

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.views import TokenBlacklistView, TokenObtainPairView, TokenRefreshView

from accounts import selectors, services
from accounts.models import ApiKey, ApiKeyMode, User
from accounts.tenancy import IsOrganizationManager, TenantMixin
from billing_site import throttle
from billing_site.api.fields import Amount
from billing_site.api.pagination import PAGE_PARAMETERS, paginated, paginated_response
from billing_site.api.throttling import AnonymousRateThrottle
from billing_site.errors import InvalidRequest, NotFound


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo is an error rather than silently ignored, and text
    fields given as another JSON type (DRF would turn `123` into `"123"`)."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            errors = {name: ["Unknown field."] for name in sorted(set(data) - set(self.fields))}
            for name, field in self.fields.items():
                value = data.get(name)
                if isinstance(field, serializers.CharField) and value is not None and not isinstance(value, str):
                    errors[name] = ["Not a valid string."]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


class RegisterApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [AnonymousRateThrottle]

    class Input(StrictSerializer):
        email = serializers.EmailField(max_length=254)
        password = serializers.CharField(max_length=128, write_only=True, trim_whitespace=False)
        organization = serializers.CharField(max_length=120)

        class Meta:
            ref_name = "RegisterInput"

    class Output(serializers.Serializer):
        email = serializers.EmailField()
        organization = serializers.DictField(help_text="`{name}`, as sent.")

        class Meta:
            ref_name = "RegisterOutput"

    @extend_schema(
        request=Input,
        responses={201: Output},
        auth=[],
        tags=["auth"],
        summary="Sign up: a person and their organization",
        description="Creates your account, your organization (you are its owner) and its wallet at 0. "
        "Answers 201 with what was sent, also for an address that already has an account (which is "
        "emailed instead and gets nothing new), so the answer tells no one which addresses are registered. "
        "Then sign in with `auth/token/`; `GET me/` names your organization.",
        examples=[
            OpenApiExample(
                "Sign up",
                value={"email": "ada@example.com", "password": "a long passphrase", "organization": "Analytical Engines"},
                request_only=True,
            ),
            OpenApiExample(
                "Registered",
                value={"email": "ada@example.com", "organization": {"name": "Analytical Engines"}},
                response_only=True,
            ),
        ],
    )
    def post(self, request):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            registration = services.user_register(
                email=data.validated_data["email"],
                password=data.validated_data["password"],
                organization_name=data.validated_data["organization"],
            )
        except DjangoValidationError as exc:
            raise InvalidRequest("The password is too weak.", details={"password": exc.messages}) from exc
        body = {"email": registration.email, "organization": {"name": data.validated_data["organization"]}}
        return Response(body, status=status.HTTP_201_CREATED)


class MeApi(APIView):
    permission_classes = [IsAuthenticated]

    class MembershipOutput(serializers.Serializer):
        organization = serializers.CharField(source="organization.slug")
        name = serializers.CharField(source="organization.name")
        role = serializers.CharField()

        class Meta:
            ref_name = "MeMembership"

    class Output(serializers.Serializer):
        id = serializers.IntegerField()
        email = serializers.EmailField()
        name = serializers.CharField()
        memberships = serializers.ListField(child=serializers.DictField())

        class Meta:
            ref_name = "MeOutput"

    @extend_schema(
        responses={200: Output},
        tags=["account"],
        summary="Who you are, and your organizations",
        description="Your user and every organization you belong to, with your role in each (`owner`, `admin`, "
        "`member`). Needs a JWT (a person); an API key belongs to an organization, not a person, and gets 400. "
        "If you belong to several organizations, name one with the `X-Organization` header on other calls.",
        examples=[
            OpenApiExample(
                "Me",
                value={
                    "id": 7,
                    "email": "ada@example.com",
                    "name": "Ada Lovelace",
                    "memberships": [{"organization": "analytical-engines", "name": "Analytical Engines", "role": "owner"}],
                },
                response_only=True,
            )
        ],
    )
    def get(self, request):
        if not isinstance(request.user, User):
            raise InvalidRequest("This endpoint describes a person; sign in with a JWT, not an API key.")
        memberships = self.MembershipOutput(selectors.membership_list(user=request.user), many=True).data
        return Response(
            {"id": request.user.pk, "email": request.user.email, "name": request.user.name, "memberships": memberships}
        )


class ApiKeyOutput(serializers.ModelSerializer):
    spent = Amount(source="lifetime_spent", read_only=True)
    allowed_models = serializers.ListField(
        child=serializers.CharField(), read_only=True, help_text="Models this key may call through the AI gateway; empty for all."
    )

    class Meta:
        model = ApiKey
        ref_name = "ApiKey"
        fields = [
            "id",
            "name",
            "mode",
            "prefix",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "spend_cap",
            "spent",
            "allowed_models",
            "rpm_limit",
            "tpm_limit",
            "max_concurrent_streams",
        ]


def _limit_field(help_text: str) -> serializers.IntegerField:
    return serializers.IntegerField(
        min_value=1, max_value=services.API_KEY_LIMIT_MAX, required=False, allow_null=True, help_text=help_text
    )


class ApiKeyLimitsInput(StrictSerializer):
    """The AI gateway's limits of a key, on creation and in a PATCH."""

    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=120),
        required=False,
        max_length=services.API_KEY_ALLOWED_MODELS_MAX,
        help_text="Model names (as `GET /v1/models` lists them) this key may call; empty or absent for all.",
    )
    rpm_limit = _limit_field("Gateway requests per minute; null for no limit.")
    tpm_limit = _limit_field("Gateway tokens per minute (prompt and completion); null for no limit.")
    max_concurrent_streams = _limit_field("Gateway streams open at once; null for no limit.")

    class Meta:
        ref_name = "ApiKeyLimitsInput"


API_KEY_EXAMPLE = {
    "id": 12,
    "name": "Production backend",
    "mode": "live",
    "prefix": "tg_live_AbC123",
    "created_at": "2026-03-01T09:30:00Z",
    "expires_at": None,
    "revoked_at": None,
    "last_used_at": None,
    "spend_cap": "500.000000000000",
    "spent": "0.000000000000",
    "allowed_models": ["gpt-4o-mini"],
    "rpm_limit": 600,
    "tpm_limit": 200000,
    "max_concurrent_streams": 10,
}


class ApiKeyListCreateApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    class Input(ApiKeyLimitsInput):
        name = serializers.CharField(max_length=100)
        mode = serializers.ChoiceField(choices=ApiKeyMode.choices, default=ApiKeyMode.LIVE)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)
        spend_cap = Amount(min_value=0, required=False, allow_null=True)

        class Meta:
            ref_name = "ApiKeyCreateInput"

    class CreatedOutput(ApiKeyOutput):
        secret = serializers.CharField()

        class Meta(ApiKeyOutput.Meta):
            ref_name = "ApiKeyCreated"
            fields = [*ApiKeyOutput.Meta.fields, "secret"]

    @extend_schema(
        operation_id="v1_api_keys_list",
        parameters=PAGE_PARAMETERS,
        responses={200: paginated(ApiKeyOutput, "ApiKeyPage")},
        tags=["keys"],
        summary="List your organization's API keys",
        description="Every key, newest first, revoked and expired ones included. The secret is never shown again: "
        "keys are identified by their `prefix` and `name`. `spent` is what the key has spent in live mode, against "
        "its optional `spend_cap`. Owners and admins only.",
    )
    def get(self, request):
        keys = selectors.api_key_list(organization=self.tenant.organization)
        return paginated_response(request=request, view=self, queryset=keys, serializer_class=ApiKeyOutput)

    @extend_schema(
        request=Input,
        responses={201: CreatedOutput},
        tags=["keys"],
        summary="Create an API key (the secret is shown once)",
        description="A `live` key spends your balance; a `test` key prices and records usage but never moves money. "
        "The answer's `secret` is the only time the key is shown: store it now. Optional: `expires_at`, and a "
        "lifetime `spend_cap` (live spending beyond it answers 402 `spend_cap_exceeded`). For the AI gateway "
        "(`/v1/…`), optionally: `allowed_models` (names of the gateway's models; none listed allows all, an unknown "
        "name is refused), `rpm_limit` and `tpm_limit` (requests and tokens per minute) and `max_concurrent_streams`. "
        "Owners and admins only.",
        examples=[
            OpenApiExample(
                "A capped production key",
                value={"name": "Production backend", "mode": "live", "spend_cap": "500.00"},
                request_only=True,
            ),
            OpenApiExample(
                "A gateway key for one model",
                value={
                    "name": "Chat frontend",
                    "allowed_models": ["gpt-4o-mini"],
                    "rpm_limit": 600,
                    "tpm_limit": 200000,
                    "max_concurrent_streams": 10,
                },
                request_only=True,
            ),
            OpenApiExample("Created", value={**API_KEY_EXAMPLE, "secret": "tg_live_AbC123…"}, response_only=True),
        ],
    )
    def post(self, request):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        created = services.api_key_create(
            organization=self.tenant.organization, created_by=self.tenant.user, **data.validated_data
        )
        created.api_key.secret = created.secret  # type: ignore[attr-defined]  # for CreatedOutput only: never stored
        return Response(self.CreatedOutput(created.api_key).data, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    def api_key(self, api_key_id: int) -> ApiKey:
        try:
            return selectors.api_key_get(organization=self.tenant.organization, api_key_id=api_key_id)
        except ApiKey.DoesNotExist as exc:
            raise NotFound("No such API key.") from exc

    @extend_schema(
        request=ApiKeyLimitsInput,
        responses={200: ApiKeyOutput},
        tags=["keys"],
        summary="Change an API key's gateway limits",
        description="Sets the fields you send and leaves the others: `allowed_models` (an empty list allows every "
        "model), `rpm_limit`, `tpm_limit`, `max_concurrent_streams` (null removes a limit). Every server applies "
        "them from its next request on. A revoked key cannot be changed (400). Owners and admins only.",
        examples=[
            OpenApiExample("Tighten a key", value={"rpm_limit": 60, "allowed_models": ["gpt-4o-mini"]}, request_only=True),
            OpenApiExample("Changed", value=API_KEY_EXAMPLE, response_only=True),
        ],
    )
    def patch(self, request, api_key_id: int):
        data = ApiKeyLimitsInput(data=request.data)
        data.is_valid(raise_exception=True)
        api_key = services.api_key_limits_update(api_key=self.api_key(api_key_id), **data.validated_data)
        return Response(ApiKeyOutput(api_key).data)

    @extend_schema(
        responses={200: ApiKeyOutput},
        tags=["keys"],
        summary="Revoke an API key",
        description="The key stops working at once, for good (a revocation cannot be undone); answers the key with "
        "its `revoked_at`. Revoking a revoked key changes nothing. Owners and admins only.",
    )
    def delete(self, request, api_key_id: int):
        api_key = services.api_key_revoke(api_key=self.api_key(api_key_id))
        return Response(ApiKeyOutput(api_key).data)


BILLING_DETAILS_EXAMPLE = {
    "billing_name": "Analytical Engines Ltd",
    "billing_address": "12 Difference Lane\nLondon N1 7AA\nUnited Kingdom",
    "tax_id": "GB123456789",
}


class BillingDetailsApi(TenantMixin, APIView):
    permission_classes = [IsAuthenticated, IsOrganizationManager]

    class Input(StrictSerializer):
        billing_name = serializers.CharField(max_length=200, allow_blank=True, trim_whitespace=False)
        billing_address = serializers.CharField(max_length=1000, allow_blank=True, trim_whitespace=False)
        tax_id = serializers.CharField(max_length=64, allow_blank=True, trim_whitespace=False)

        class Meta:
            ref_name = "BillingDetailsInput"

    class Output(serializers.Serializer):
        billing_name = serializers.CharField(help_text="The legal name on receipts and statements; empty prints `name`.")
        billing_address = serializers.CharField(help_text="Postal address, lines separated by `\\n`.")
        tax_id = serializers.CharField(help_text="VAT number or other tax id; empty prints none.")

        class Meta:
            ref_name = "BillingDetails"

    @extend_schema(
        operation_id="v1_billing_details_read",
        responses={200: Output},
        tags=["account"],
        summary="Your billing details",
        description="Who your receipts and statements are made out to: `billing_name` (empty: your organization's "
        "name is printed), `billing_address` (lines separated by `\\n`) and `tax_id`. Owners and admins only.",
        examples=[OpenApiExample("Billing details", value=BILLING_DETAILS_EXAMPLE, response_only=True)],
    )
    def get(self, request):
        return Response(self.Output(self.tenant.organization).data)

    @extend_schema(
        operation_id="v1_billing_details_update",
        request=Input,
        responses={200: Output},
        tags=["account"],
        summary="Set your billing details",
        description="Replaces all three fields (send an empty string to clear one); receipts and statements print "
        "them from then on; a document already issued keeps the details it was issued with. Control characters (other than line "
        "breaks and tabs in the address) and invisible formatting characters are refused: 400 `invalid_request` naming "
        "each faulty field, and nothing changes. Owners and admins only.",
        examples=[
            OpenApiExample("Set billing details", value=BILLING_DETAILS_EXAMPLE, request_only=True),
            OpenApiExample("Saved", value=BILLING_DETAILS_EXAMPLE, response_only=True),
        ],
    )
    def put(self, request):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        actor = self.tenant.user
        assert actor is not None, "IsOrganizationManager lets people in, never API keys"
        organization = services.organization_billing_update(
            organization=self.tenant.organization, actor=actor, **data.validated_data
        )
        return Response(self.Output(organization).data)


TOKEN_PAIR_EXAMPLE = OpenApiExample(
    "Tokens", value={"access": "eyJhbGciOiJIUzI1NiIs…", "refresh": "eyJhbGciOiJIUzI1NiIs…"}, response_only=True
)


@extend_schema_view(
    post=extend_schema(
        tags=["auth"],
        summary="Sign in: get an access and a refresh token",
        description="Send your email and password; use `access` as `Authorization: Bearer <access>` (it lives "
        "15 minutes by default) and `refresh` to get a new pair. After repeated wrong passwords for one account "
        "from one address, sign-in from there is refused for a while (429 with `Retry-After`).",
        examples=[
            OpenApiExample("Sign in", value={"email": "ada@example.com", "password": "a long passphrase"}, request_only=True),
            TOKEN_PAIR_EXAMPLE,
        ],
    )
)
class TokenObtainApi(TokenObtainPairView):
    """simplejwt's pair, behind the sign-in lockout the dashboard and the back office share: a locked
    out (account, address) gets 429 without its password being checked."""

    throttle_classes = [AnonymousRateThrottle]

    def post(self, request, *args, **kwargs):
        email = request.data.get(User.USERNAME_FIELD) if isinstance(request.data, dict) else None
        if not isinstance(email, str) or not email.strip():
            return super().post(request, *args, **kwargs)  # the serializer refuses it
        ip = throttle.client_ip(request)
        wait = throttle.signin_retry_after(email=email, ip=ip)
        if wait:
            raise Throttled(wait=wait, detail="Too many failed sign-in attempts for this account from your address.")
        try:
            response = super().post(request, *args, **kwargs)
        except AuthenticationFailed:
            throttle.signin_failed(email=email, ip=ip)
            raise
        throttle.signin_succeeded(email=email, ip=ip)
        return response


@extend_schema_view(
    post=extend_schema(
        tags=["auth"],
        summary="Refresh: trade a refresh token for a new pair",
        description="Refresh tokens rotate: the answer carries a new `refresh`, and the one you sent stops working. "
        "Changing or resetting your password revokes every refresh token you hold.",
        examples=[OpenApiExample("Refresh", value={"refresh": "eyJhbGciOiJIUzI1NiIs…"}, request_only=True), TOKEN_PAIR_EXAMPLE],
    )
)
class TokenRefreshApi(TokenRefreshView):
    throttle_classes = [AnonymousRateThrottle]


@extend_schema_view(
    post=extend_schema(
        tags=["auth"],
        summary="Sign out: revoke a refresh token",
        description="The refresh token can no longer be used. An access token already issued keeps working until it expires.",
        examples=[OpenApiExample("Sign out", value={"refresh": "eyJhbGciOiJIUzI1NiIs…"}, request_only=True)],
    )
)
class TokenBlacklistApi(TokenBlacklistView):
    throttle_classes = [AnonymousRateThrottle]
