"""Writes for users, organizations, memberships and API keys."""

import hashlib
import logging
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict, Unpack

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.text import slugify
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from accounts.models import MANAGER_ROLES, ApiKey, ApiKeyMode, Invitation, Membership, Organization, Role, User, time_zone_names
from accounts.selectors import API_KEYS, api_key_used_at_note
from accounts.signals import api_key_models_check, organization_created
from billing_site import locks, throttle
from billing_site.errors import DomainError, ErrorCode, InvalidRequest, PermissionRefused

logger = logging.getLogger(__name__)
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


def _organization_name_clean(name: str) -> str:
    """The name as the model field cleans it (length, no control characters), or InvalidRequest on
    `organization`, the field's name in the API and the dashboard forms."""
    try:
        return Organization._meta.get_field("name").clean(name, None)
    except ValidationError as exc:
        raise InvalidRequest(
            "The organization name is not valid: " + " ".join(exc.messages), details={"organization": exc.messages}
        ) from exc


def organization_create(*, name: str, owner: User) -> Organization:
    """Create an organization with `owner` as its owner; its wallet opens in the same transaction.
    InvalidRequest (on `organization`) for a name the model refuses."""
    name = _organization_name_clean(name)
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


@dataclass(frozen=True)
class Registration:
    email: str  # as stored: what a face may echo back
    user: User | None  # None: the address already had an account, whose owner was emailed instead


def user_register(*, email: str, password: str, organization_name: str) -> Registration:
    """Sign-up: a user, their organization (they own it) and its empty wallet, or nothing at all.
    An address that already has an account creates nothing and gets an email instead (at most one an
    hour), so that the faces can answer both cases alike and tell no one which addresses are
    registered; both run the password hasher once. Invalid input is refused first, either way."""
    email = User.objects.normalize_email(email).lower()
    candidate = User(email=email)
    validate_password(password, user=candidate)
    organization_name = _organization_name_clean(organization_name)
    with transaction.atomic():
        try:
            with transaction.atomic():
                user = User.objects.create_user(email=email, password=password)
        except IntegrityError:
            _signup_attempt_notice(email=email)
            return Registration(email=email, user=None)
        organization_create(name=organization_name, owner=user)
    return Registration(email=email, user=user)


SIGNUP_NOTICE_INTERVAL = timedelta(hours=1)


def _signup_attempt_notice(*, email: str) -> None:
    """Queue the 'someone tried to sign up with your address' email, once the transaction commits."""
    if throttle.rate_exceeded("signup-notice", email, limit=1, window=int(SIGNUP_NOTICE_INTERVAL.total_seconds())):
        return  # an inbox is not a target: one notice per interval however often the address is tried
    user_id = User.objects.filter(email=email).values_list("pk", flat=True).first()

    def enqueue() -> None:
        from accounts import tasks

        try:
            tasks.user_signup_attempt_notify.delay(user_id)
        except Exception:  # a broker outage must not make this answer differ from a real sign-up's
            logger.exception("could not queue the sign-up attempt notice of user %s", user_id)

    if user_id is not None:
        transaction.on_commit(enqueue)


def user_signup_attempt_notify(*, user_id: int) -> None:
    """Tell the owner of an address that someone tried to sign up with it, and how to get back in."""
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return
    context = {"user": user, "site_url": settings.SITE_URL.rstrip("/")}
    send_mail(
        subject=render_to_string("registration/signup_attempt_subject.txt", context).strip(),
        message=render_to_string("registration/signup_attempt_email.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[user.email],
    )


def user_refresh_tokens_revoke(*, user: User) -> None:
    """Blacklist every unexpired refresh token of `user`, rotated ones too (simplejwt records each
    one it issues), so none mints another access token. Runs whenever a password changes
    (accounts.signals.user_password_changed). Dashboard sessions need nothing: Django checks each
    against a hash of the password, and update_session_auth_hash keeps the one that changed it."""
    open_tokens = OutstandingToken.objects.filter(user=user, expires_at__gt=timezone.now(), blacklistedtoken__isnull=True)
    BlacklistedToken.objects.bulk_create([BlacklistedToken(token=token) for token in open_tokens], ignore_conflicts=True)


class ApiKeyLimits(TypedDict, total=False):
    """What the AI gateway lets a key do: the models it may call (none listed: all), requests and
    tokens per minute, and streams open at once (None: no limit)."""

    allowed_models: Collection[str]
    rpm_limit: int | None
    tpm_limit: int | None
    max_concurrent_streams: int | None


API_KEY_LIMIT_MAX = 2_147_483_647  # the columns' (PostgreSQL integer) ceiling
API_KEY_ALLOWED_MODELS_MAX = 200
_MODEL_NAME_MAX_LENGTH = 120


def _api_key_limits_clean(limits: ApiKeyLimits) -> dict[str, Any]:
    """The given limits as columns: each count a whole number from 1 up or None; the model names once
    each, in the order given, and known to the gateway (`api_key_models_check`). InvalidRequest names
    every refused field."""
    cleaned: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for field in ("rpm_limit", "tpm_limit", "max_concurrent_streams"):
        if field in limits:
            value = limits[field]
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= API_KEY_LIMIT_MAX
            ):
                errors[field] = [f"A whole number from 1 to {API_KEY_LIMIT_MAX}, or null for no limit."]
            cleaned[field] = value
    if "allowed_models" in limits:
        models = limits["allowed_models"]
        given = [] if isinstance(models, str) else list(models)
        names = [name for name in given if isinstance(name, str)]
        if (
            isinstance(models, str)
            or len(names) < len(given)
            or not all(0 < len(name) <= _MODEL_NAME_MAX_LENGTH for name in names)
        ):
            errors["allowed_models"] = [f"A list of model names (1 to {_MODEL_NAME_MAX_LENGTH} characters each)."]
        names = list(dict.fromkeys(names))
        if len(names) > API_KEY_ALLOWED_MODELS_MAX:
            errors["allowed_models"] = [f"At most {API_KEY_ALLOWED_MODELS_MAX} models; list none to allow them all."]
        cleaned["allowed_models"] = names
    if errors:
        raise InvalidRequest("The request is invalid; see details.", details=errors)
    if cleaned.get("allowed_models"):
        api_key_models_check.send(sender=ApiKey, models=cleaned["allowed_models"])
    return cleaned


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: ApiKey
    secret: str  # shown once, never stored


def api_key_create(
    *,
    organization: Organization,
    name: str,
    mode: str = ApiKeyMode.LIVE,
    created_by: User | None = None,
    expires_at: datetime | None = None,
    spend_cap: Decimal | None = None,
    allowed_models: Collection[str] = (),
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    max_concurrent_streams: int | None = None,
) -> CreatedApiKey:
    """Create a key; the answer holds the only copy of the secret there will ever be. The gateway's
    limits are optional (`api_key_limits_update` says what they accept)."""
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidRequest("`expires_at` must be in the future.", details={"expires_at": ["Must be in the future."]})
    limits = _api_key_limits_clean(
        ApiKeyLimits(
            allowed_models=allowed_models,
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
            max_concurrent_streams=max_concurrent_streams,
        )
    )
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
        **limits,
    )
    api_key.full_clean()
    api_key.save()
    return CreatedApiKey(api_key=api_key, secret=secret)


def api_key_limits_update(*, api_key: ApiKey, **limits: Unpack[ApiKeyLimits]) -> ApiKey:
    """Change the gateway limits given (a PATCH); every process applies them from its next request on
    (the API key cache's token changes before and after the write). A revoked key is not changed."""
    if api_key.revoked_at is not None:
        raise InvalidRequest("This key is revoked: it cannot be changed.")
    columns = _api_key_limits_clean(limits)
    if columns:
        with transaction.atomic(), API_KEYS.invalidating():
            ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(**columns)
        api_key.refresh_from_db(fields=list(columns))
    return api_key


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke the key for good. Every process refuses it from its next request on (the cache's
    token changes before and after the write); CacheUnavailable, revoking nothing, while Redis is down."""
    if api_key.revoked_at is None:
        with transaction.atomic(), API_KEYS.invalidating():
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
        api_key_used_at_note(digest=api_key.digest, used_at=now)


# --- Team: invitations and memberships ------------------------------------------------------------
#
# Lock order (as everywhere): the organization row first. Every change of who owns an organization
# locks it, so two owners demoting or removing each other at once cannot leave it with none.

INVITATION_TTL = timedelta(days=7)
INVITATIONS_PER_HOUR = 20  # per organization, and per inviting person across organizations


class InvitationInvalid(DomainError):
    code = ErrorCode.INVALID_REQUEST
    message = "This invitation link is invalid, was revoked or has expired."


class InvitationsThrottled(DomainError):
    code = ErrorCode.THROTTLED


class LastOwner(DomainError):
    code = ErrorCode.INVALID_REQUEST
    message = "An organization always keeps at least one owner: make someone else an owner first."


def _owners_left_check(owners_after: int) -> None:
    """The rule of every change of who owns an organization (team page, API, back office)."""
    if owners_after < 1:
        raise LastOwner()


def invitation_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _role_in(organization_id: int, user: User) -> Role | None:
    role = Membership.objects.filter(organization_id=organization_id, user=user).values_list("role", flat=True).first()
    return Role(role) if role else None


def _may_grant(actor_role: Role | None, role: Role) -> bool:
    """Owners grant any role; admins grant admin or member; members grant nothing."""
    if actor_role == Role.OWNER:
        return True
    return actor_role == Role.ADMIN and role != Role.OWNER


@dataclass(frozen=True)
class CreatedInvitation:
    invitation: Invitation
    token: str  # goes into the emailed link; never stored


def invitation_create(
    *, organization: Organization, email: str, role: str, invited_by: User, ttl: timedelta = INVITATION_TTL
) -> CreatedInvitation:
    """Invite `email` with `role`; an earlier open invitation to the same address is revoked, so
    only the newest link works. PermissionRefused unless the inviter may grant that role."""
    try:
        role = Role(role)
    except ValueError as exc:
        raise InvalidRequest("Unknown role.", details={"role": ["Unknown role."]}) from exc
    if not _may_grant(_role_in(organization.pk, invited_by), role):
        raise PermissionRefused("Only owners may invite owners; only owners and admins may invite.")
    email = User.objects.normalize_email(email).lower()
    if Membership.objects.filter(organization=organization, user__email=email).exists():
        raise InvalidRequest(f"{email} is already a member.", details={"email": ["Already a member."]})
    _invitation_rate_check(organization=organization, invited_by=invited_by)
    token = secrets.token_urlsafe(32)
    now = timezone.now()
    invitation = Invitation(
        organization=organization,
        email=email,
        role=role,
        digest=invitation_digest(token),
        invited_by=invited_by,
        created_at=now,
        expires_at=now + ttl,
    )
    invitation.full_clean(validate_constraints=False)
    try:
        with transaction.atomic():
            Invitation.objects.filter(
                organization=organization, email=email, accepted_at__isnull=True, revoked_at__isnull=True
            ).update(revoked_at=now)
            invitation.save()
    except IntegrityError as exc:  # a concurrent invitation to the same address won
        raise InvalidRequest(f"An invitation to {email} was just sent.", details={"email": ["Just invited."]}) from exc
    return CreatedInvitation(invitation=invitation, token=token)


def _invitation_rate_check(*, organization: Organization, invited_by: User) -> None:
    """Count this invitation against its organization's hourly budget and its sender's (each one is
    an email we send for them); InvitationsThrottled once either is spent."""
    for scope, subject, sender in (
        ("invitations-organization", organization.pk, "This organization"),
        ("invitations-person", invited_by.pk, "You"),
    ):
        if throttle.rate_exceeded(scope, str(subject), limit=INVITATIONS_PER_HOUR, window=3600):
            raise InvitationsThrottled(f"{sender} sent {INVITATIONS_PER_HOUR} invitations in the last hour: try again later.")


def invitation_revoke(*, invitation: Invitation, actor: User) -> Invitation:
    if _role_in(invitation.organization_id, actor) not in MANAGER_ROLES:
        raise PermissionRefused("Only the organization's owners and admins may do this.")
    if invitation.accepted_at is None and invitation.revoked_at is None:
        Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        invitation.refresh_from_db(fields=["revoked_at"])
    return invitation


def invitation_accept(*, token: str, user: User) -> Membership:
    """Join the invitation's organization with its role. The signed-in user must own the invited
    address. Accepting twice answers the same membership; a revoked, expired or foreign link is
    InvitationInvalid, changing nothing."""
    if not isinstance(token, str) or not token:
        raise InvitationInvalid()
    with transaction.atomic():
        invitation = locks.invitation_lock(digest=invitation_digest(token))
        if invitation is None or invitation.revoked_at is not None:
            raise InvitationInvalid()
        if invitation.accepted_at is not None:
            membership = Membership.objects.filter(organization_id=invitation.organization_id, user=user).first()
            if invitation.accepted_by_id == user.pk and membership is not None:
                return membership
            raise InvitationInvalid("This invitation has already been used.")
        if invitation.expires_at <= timezone.now():
            raise InvitationInvalid("This invitation has expired: ask for a new one.")
        if invitation.email != user.email.lower():
            raise InvitationInvalid(f"This invitation was sent to {invitation.email}: sign in with that address to accept it.")
        membership, _ = Membership.objects.get_or_create(
            organization_id=invitation.organization_id, user=user, defaults={"role": invitation.role}
        )
        Invitation.objects.filter(pk=invitation.pk).update(accepted_at=timezone.now(), accepted_by=user)
    return membership


def invitation_signup(*, token: str, password: str, name: str = "") -> tuple[User, Membership]:
    """Create the invited person's account and accept the invitation, or do nothing at all."""
    invitation = Invitation.objects.filter(digest=invitation_digest(token)).first() if isinstance(token, str) else None
    if invitation is None or not invitation.is_pending():
        raise InvitationInvalid()
    validate_password(password, user=User(email=invitation.email, name=name))
    with transaction.atomic():
        try:
            with transaction.atomic():
                user = User.objects.create_user(email=invitation.email, password=password, name=name)
        except IntegrityError as exc:
            raise InvalidRequest(
                "An account with this email already exists: sign in to accept.", details={"email": ["already registered"]}
            ) from exc
        membership = invitation_accept(token=token, user=user)
    return user, membership


def _locked_team_change(membership: Membership, actor: User) -> tuple[Membership, Role | None, int]:
    """Lock the organization, then answer the membership re-read, the actor's role and the number
    of owners, all as of the lock. Must run inside a transaction."""
    locks.organization_lock(organization_id=membership.organization_id)
    locked = Membership.objects.select_related("user").filter(pk=membership.pk).first()
    if locked is None:
        raise InvalidRequest("This person is no longer a member.")
    owners = Membership.objects.filter(organization_id=membership.organization_id, role=Role.OWNER).count()
    return locked, _role_in(membership.organization_id, actor), owners


def membership_role_change(*, membership: Membership, role: str, actor: User) -> Membership:
    """Give a member another role. Owners change anyone; admins change admins and members but
    grant no ownership; the last owner is never demoted (LastOwner)."""
    try:
        role = Role(role)
    except ValueError as exc:
        raise InvalidRequest("Unknown role.", details={"role": ["Unknown role."]}) from exc
    with transaction.atomic():
        locked, actor_role, owners = _locked_team_change(membership, actor)
        if actor_role not in MANAGER_ROLES or not _may_grant(actor_role, Role(locked.role)) or not _may_grant(actor_role, role):
            raise PermissionRefused("Only owners may change an owner's role or make someone an owner.")
        _owners_left_check(owners - (locked.role == Role.OWNER and role != Role.OWNER))
        if locked.role != role:
            Membership.objects.filter(pk=locked.pk).update(role=role)
            locked.role = role
    return locked


def membership_remove(*, membership: Membership, actor: User) -> None:
    """Remove a member (or leave, when the actor is that member). Only owners remove owners; the
    last owner is never removed (LastOwner)."""
    with transaction.atomic():
        locked, actor_role, owners = _locked_team_change(membership, actor)
        leaving = locked.user_id == actor.pk
        if not leaving and (actor_role not in MANAGER_ROLES or not _may_grant(actor_role, Role(locked.role))):
            raise PermissionRefused("Only owners may remove an owner; only owners and admins may remove members.")
        _owners_left_check(owners - (locked.role == Role.OWNER))
        Membership.objects.filter(pk=locked.pk).delete()


def organization_owners_check(
    *, organization_id: int, owners: Collection[int], not_owners: Collection[int], added_owners: int
) -> None:
    """For a change made outside the team services (the back office's membership inline): lock the
    organization and refuse (LastOwner) unless someone owns it afterwards. `owners` and `not_owners`
    are the existing memberships that will, or will not (deleted or another role), own it;
    `added_owners` counts new owner memberships. Runs inside the change's own transaction."""
    locks.organization_lock(organization_id=organization_id)
    current = set(Membership.objects.filter(organization_id=organization_id, role=Role.OWNER).values_list("pk", flat=True))
    _owners_left_check(len((current - set(not_owners)) | set(owners)) + added_owners)


def organization_rename(*, organization: Organization, name: str, actor: User) -> Organization:
    """Rename an organization (owners and admins; its slug, which API clients name, stays).
    InvalidRequest (on `organization`) for a name the model refuses; PermissionRefused otherwise."""
    name = _organization_name_clean(name)
    if _role_in(organization.pk, actor) not in MANAGER_ROLES:
        raise PermissionRefused("Only owners and admins rename the organization.")
    Organization.objects.filter(pk=organization.pk).update(name=name)
    organization.name = name
    return organization


def user_time_zone_set(*, user: User, time_zone: str) -> User:
    """Set the zone the dashboard shows this person's times in. InvalidRequest for an unknown zone."""
    if time_zone not in time_zone_names():
        raise InvalidRequest("Unknown time zone.", details={"time_zone": ["Unknown time zone."]})
    User.objects.filter(pk=user.pk).update(time_zone=time_zone)
    user.time_zone = time_zone
    return user


BILLING_FIELDS = ("billing_name", "billing_address", "tax_id")


@dataclass(frozen=True)
class BillingDetails:
    billing_name: str
    billing_address: str
    tax_id: str


def billing_address_normalize(address: str) -> str:
    """One line break per line (`\\r\\n` and `\\r` become `\\n`), no trailing spaces, no empty lines
    at either end: the address as documents print it."""
    lines = [line.rstrip() for line in address.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n").strip()


def organization_billing_update(
    *, organization: Organization, billing_name: str, billing_address: str, tax_id: str, actor: User
) -> Organization:
    """Set who receipts and statements are made out to (owners and admins). Every field is replaced;
    an empty name prints the organization's name.
    InvalidRequest naming each faulty field (control or invisible characters, too long) and nothing
    changed; PermissionRefused for anyone else."""
    if _role_in(organization.pk, actor) not in MANAGER_ROLES:
        raise PermissionRefused("Only owners and admins change the billing details.")
    details = BillingDetails(
        billing_name=billing_name.strip(), billing_address=billing_address_normalize(billing_address), tax_id=tax_id.strip()
    )
    candidate = Organization(pk=organization.pk, name=organization.name, slug=organization.slug, **vars(details))
    errors: dict[str, list[str]] = {}
    try:
        candidate.full_clean(
            exclude=[f.name for f in Organization._meta.fields if f.name not in BILLING_FIELDS], validate_unique=False
        )
    except ValidationError as exc:
        errors = exc.message_dict
    # A TextField's max_length is a form's business only; the model does not check it.
    address_max = Organization._meta.get_field("billing_address").max_length or 0
    if len(details.billing_address) > address_max:
        errors.setdefault("billing_address", []).append(f"At most {address_max} characters.")
    if errors:
        raise InvalidRequest("The billing details are not valid.", details=errors)
    # Only these columns: the rest of the row (name, limits, stripes) may have changed since it was read.
    Organization.objects.filter(pk=organization.pk).update(**vars(details))
    for name, value in vars(details).items():
        setattr(organization, name, value)
    return organization
