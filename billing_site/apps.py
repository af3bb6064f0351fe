from django.apps import AppConfig


class BillingSiteConfig(AppConfig):
    """The project's plumbing as an app, so its system checks are registered at start-up."""

    name = "billing_site"
    verbose_name = "Tollgate site"

    def ready(self) -> None:
        from billing_site import checks  # noqa: F401 - registers the checks
