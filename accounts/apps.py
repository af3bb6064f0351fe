from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and tenancy"

    def ready(self) -> None:
        from accounts import schema  # noqa: F401 - registers the OpenAPI auth extensions
        from accounts.models import ApiKey, Organization
        from accounts.selectors import API_KEYS
        from accounts.services import user_refresh_tokens_revoke
        from accounts.signals import user_password_changed

        def revoke(sender, user, **kwargs) -> None:
            user_refresh_tokens_revoke(user=user)

        user_password_changed.connect(revoke, weak=False, dispatch_uid="accounts.password_changed_revokes_tokens")
        # A cached key row carries its organization's columns (rate-limit overrides, slug, name).
        API_KEYS.invalidated_by(ApiKey, creation=False)
        API_KEYS.invalidated_by(Organization, creation=False)
