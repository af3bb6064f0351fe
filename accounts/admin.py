from django.conf import settings
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import UserChangeForm
from django.core.exceptions import ValidationError

from accounts import selectors, services
from accounts.models import ApiKey, Invitation, Membership, Role, User
from billing_site.admin import AMOUNT_INPUTS, AccessibleLabels, LabelledForm, LabelledInlineFormSet, money_cell


class UserAdminForm(AccessibleLabels, UserChangeForm):
    """Django's user form with every input named (its last login and date joined are split boxes)."""


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = UserAdminForm
    ordering = ["email"]
    list_display = ["email", "name", "is_staff", "is_active", "date_joined"]
    search_fields = ["email", "name"]
    fieldsets = [
        (None, {"fields": ["email", "password", "name"]}),
        ("Permissions", {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]}),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]})]

    def get_deleted_objects(self, objs, request):
        """A person who owns an organization is not deleted (one page or a bulk delete alike): the admin
        lists the organizations as what protects them, instead of leaving them without an owner."""
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        owned = [
            f"{membership.user} owns the organization “{membership.organization}”: make another member its owner first"
            for membership in selectors.ownerships_of(user_ids=[user.pk for user in objs])
        ]
        return deleted, model_count, perms_needed, [*owned, *protected]


class MembershipInlineFormSet(LabelledInlineFormSet):
    """Staff cannot remove or demote an organization's last owner: the team services' rule
    (`accounts.services.organization_owners_check`), applied to the rows this save changes."""

    def clean(self) -> None:
        super().clean()
        if any(self.errors) or self.instance.pk is None:
            return
        owners: list[int] = []
        not_owners: list[int] = []
        added_owners = 0
        touched = False
        for form in self.forms:
            deleted = self.can_delete and self._should_delete_form(form)  # type: ignore[attr-defined]  # Django's own test
            if not (deleted or form.has_changed()):
                continue
            touched = True
            owning = not deleted and form.cleaned_data.get("role") == Role.OWNER
            if form.instance.pk is None:
                added_owners += owning
            else:
                (owners if owning else not_owners).append(form.instance.pk)
        if not touched:
            return
        try:
            services.organization_owners_check(
                organization_id=self.instance.pk, owners=owners, not_owners=not_owners, added_owners=added_owners
            )
        except services.LastOwner as error:
            raise ValidationError(error.message, code="last_owner") from error


class MembershipInline(admin.TabularInline):
    model = Membership
    form = LabelledForm
    formset = MembershipInlineFormSet
    extra = 0
    autocomplete_fields = ["user"]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    form = LabelledForm
    extra = 0
    can_delete = False
    formfield_overrides = AMOUNT_INPUTS
    fields = ["name", "mode", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at", "spend_cap", "spent_shown"]
    # A revocation is final (api_key_revoke); staff cannot un-revoke a key by saving a stale form.
    readonly_fields = ["name", "mode", "prefix", "created_at", "revoked_at", "last_used_at", "spent_shown"]

    @admin.display(description="spent")
    def spent_shown(self, key: ApiKey) -> str:
        return money_cell(key.lifetime_spent, settings.CURRENCY)

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # keys are created by their organization, which alone sees the secret


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Read-only: invitations are sent and accepted by the organization's owners and admins."""

    list_display = ["email", "organization", "role", "invited_by", "created_at", "expires_at", "accepted_at", "revoked_at"]
    list_filter = ["role"]
    search_fields = ["email", "organization__slug"]
    list_select_related = ["organization", "invited_by"]
    readonly_fields = ["organization", "email", "role", "invited_by", "created_at", "expires_at", "accepted_at", "revoked_at"]
    exclude = ["digest"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
