"""OpenAPI descriptions of our two authentication schemes (loaded by AccountsConfig.ready)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object


class ApiKeySchemeExtension(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKey"
    priority = 1

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "An API key (tg_live_… or tg_test_…); `Authorization: Bearer <key>` works too.",
        }


class JwtSchemeExtension(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.JwtAuthentication"
    name = "JWT"
    priority = 1

    def get_security_definition(self, auto_schema):
        return build_bearer_security_scheme_object(header_name="Authorization", token_prefix="Bearer", bearer_format="JWT")  # noqa: S106
