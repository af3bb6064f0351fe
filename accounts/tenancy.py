"""Who is calling and for which organization. Every API view finds its tenant here; querysets are
scoped to `request.tenant.organization`, never to an id taken from the body."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.http import HttpRequest
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts.models import MANAGER_ROLES, ApiKey, ApiKeyMode, Membership, Organization, Role, User
from billing_site.errors import NotFound, OrganizationRequired
from billing_site.observability import bind_tenant

if TYPE_CHECKING:
    from rest_framework.views import APIView as _MixinBase
else:
    _MixinBase = object


@dataclass(frozen=True, slots=True)
class Tenant:
    organization: Organization
    user: User | None  # the person, when authenticated by JWT
    api_key: ApiKey | None  # the key, when authenticated by API key
    role: Role | None  # the person's role; None for a key
    is_test: bool = field(init=False, default=False)  # a test-mode key: record usage, move no money

    def __post_init__(self) -> None:
        # Computed once: the batch path asks for every event.
        object.__setattr__(self, "is_test", self.api_key is not None and self.api_key.mode == ApiKeyMode.TEST.value)

    @property
    def api_key_id(self) -> int | None:
        return self.api_key.pk if self.api_key is not None else None

    @property
    def is_manager(self) -> bool:
        return self.role in MANAGER_ROLES


def tenant_resolve(*, user: User | None, api_key: ApiKey | None, organization_slug: str | None) -> Tenant:
    """Resolve the organization of an authenticated request.

    An API key implies its organization. A person names one with X-Organization unless they have
    exactly one membership; naming one they do not belong to answers 404, like any other tenant's data.
    """
    if api_key is not None:
        return Tenant(organization=api_key.organization, user=None, api_key=api_key, role=None)
    memberships = Membership.objects.select_related("organization").filter(user=user)
    if organization_slug:
        membership = memberships.filter(organization__slug=organization_slug).first()
        if membership is None:
            raise NotFound("No such organization.")
    else:
        found = list(memberships[:2])
        if len(found) == 1:
            membership = found[0]
        elif not found:
            raise NotFound("You do not belong to any organization.")
        else:
            raise OrganizationRequired()
    return Tenant(organization=membership.organization, user=user, api_key=None, role=Role(membership.role))


def request_tenant(request: HttpRequest) -> Tenant:
    """The tenant TenantMixin put on the request: an attribute of ours, which Django's types do not declare."""
    tenant: Tenant = request.tenant  # type: ignore[attr-defined]
    return tenant


class TenantMixin(_MixinBase):
    """Resolves `request.tenant` right after authentication, before the view's permissions run."""

    def check_permissions(self, request: Request) -> None:
        if getattr(request, "tenant", None) is None and request.user is not None and request.user.is_authenticated:
            tenant = tenant_resolve(
                user=request.user if isinstance(request.user, User) else None,
                api_key=request.auth if isinstance(request.auth, ApiKey) else None,
                organization_slug=request.headers.get("X-Organization"),
            )
            request.tenant = tenant  # type: ignore[attr-defined]  # see request_tenant
            if tenant.api_key is not None:
                principal = f"key:{tenant.api_key.prefix}"
            else:
                assert tenant.user is not None  # a tenant without a key is a signed-in person's
                principal = f"user:{tenant.user.pk}"
            bind_tenant(organization=tenant.organization.slug, principal=principal)
        super().check_permissions(request)

    @property
    def tenant(self) -> Tenant:
        return request_tenant(self.request)


class IsOrganizationManager(BasePermission):
    """Owners and admins, signed in as themselves (API keys cannot manage an organization)."""

    message = "Only the organization's owners and admins may do this."

    def has_permission(self, request, view) -> bool:
        tenant = getattr(request, "tenant", None)
        return tenant is not None and tenant.is_manager
