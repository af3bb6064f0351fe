"""Writes for users, organizations, memberships and API keys."""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import ApiKey, ApiKeyMode, Membership, Organization, Role, User
from accounts.signals import organization_created
from billing_site.errors import InvalidRequest

API_KEY_PREFIXES = {ApiKeyMode.LIVE: "tg_live_", ApiKeyMode.TEST: "tg_test_"}
API_KEY_READABLE_CHARS = 6  # of the random part, kept readable next to the mode prefix


def api_key_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _unique_slug(name: str) -> str:
    base = slugify(name)[:50] or "org"
    slug, n = base, 1
    while Organization.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def organization_create(*, name: str, owner: User) -> Organization:
    """Create an organization with `owner` as its owner; its wallet opens in the same transaction."""
    for attempt in range(5):
        try:
            with transaction.atomic():
                organization = Organization(name=name, slug=_unique_slug(name))
                organization.full_clean(validate_unique=False)
                organization.save()
                Membership.objects.create(organization=organization, user=owner, role=Role.OWNER)
                organization_created.send(sender=Organization, organization=organization)
            return organization
        except IntegrityError:
            # Another sign-up took the same slug between our check and our insert: pick again.
            if attempt == 4 or not Organization.objects.filter(slug=organization.slug).exists():
                raise
    raise AssertionError("unreachable")


def user_register(*, email: str, password: str, organization_name: str) -> tuple[User, Organization]:
    """Sign-up: a user, their organization (they own it) and its empty wallet, or nothing at all."""
    email = User.objects.normalize_email(email).lower()
    candidate = User(email=email)
    validate_password(password, user=candidate)
    with transaction.atomic():
        try:
            with transaction.atomic():
                user = User.objects.create_user(email=email, password=password)
        except IntegrityError as exc:
            raise InvalidRequest("An account with this email already exists.", details={"email": ["already registered"]}) from exc
        organization = organization_create(name=organization_name, owner=user)
    return user, organization


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: ApiKey
    secret: str  # shown once, never stored


def api_key_create(*, organization: Organization, name: str, mode: str = ApiKeyMode.LIVE, created_by: User | None = None,
                   expires_at: datetime | None = None, spend_cap: Decimal | None = None) -> CreatedApiKey:  # fmt: skip
    """Create a key; the answer holds the only copy of the secret there will ever be."""
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidRequest("`expires_at` must be in the future.", details={"expires_at": ["Must be in the future."]})
    random_part = secrets.token_urlsafe(32)  # 256 bits
    secret = API_KEY_PREFIXES[ApiKeyMode(mode)] + random_part
    api_key = ApiKey(
        organization=organization,
        name=name,
        mode=mode,
        prefix=secret[: len(API_KEY_PREFIXES[ApiKeyMode(mode)]) + API_KEY_READABLE_CHARS],
        digest=api_key_digest(secret),
        created_by=created_by,
        expires_at=expires_at,
        spend_cap=spend_cap,
    )
    api_key.full_clean()
    api_key.save()
    return CreatedApiKey(api_key=api_key, secret=secret)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


def api_key_touch(*, api_key: ApiKey) -> None:
    """Record use at most once per API_KEY_LAST_USED_RESOLUTION, so requests do not each pay a write."""
    now = timezone.now()
    stale_before = now - settings.API_KEY_LAST_USED_RESOLUTION
    if api_key.last_used_at is None or api_key.last_used_at < stale_before:
        stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale_before)
        ApiKey.objects.filter(stale, pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
