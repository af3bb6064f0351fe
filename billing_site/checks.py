"""System checks for production settings (`manage.py check --deploy`)."""

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def metrics_restricted_check(app_configs, **kwargs) -> list[Warning]:
    if settings.DEVELOPMENT or settings.METRICS_TOKEN or settings.METRICS_ALLOWED_NETWORKS:
        return []
    return [
        Warning(
            "/metrics answers 403 to everyone: neither METRICS_TOKEN nor METRICS_ALLOWED_NETWORKS is set.",
            hint="Set METRICS_TOKEN (Prometheus sends it as a bearer token) or METRICS_ALLOWED_NETWORKS (CIDRs).",
            id="billing_site.W001",
        )
    ]


@register(deploy=True)
def seller_named_check(app_configs, **kwargs) -> list[Warning]:
    if settings.DEVELOPMENT or "SELLER_NAME" in settings.SELLER_SET:
        return []
    return [
        Warning(
            "SELLER_NAME is not set: every receipt and statement names 'Tollgate' as the seller.",
            hint="Set SELLER_NAME, and SELLER_ADDRESS, SELLER_TAX_ID, SELLER_EMAIL as your invoices need (docs/statements.md).",
            id="billing_site.W002",
        )
    ]


# A month's statement splits usage by service from its usage records (docs/statements.md): they must
# outlive the month by the issue delay and any catch-up after an outage.
STATEMENT_RETENTION_DAYS_MIN = 62


@register()
def retention_keeps_statement_months_check(app_configs, **kwargs) -> list[Warning]:
    if not 0 < settings.USAGE_RETENTION_DAYS < STATEMENT_RETENTION_DAYS_MIN:
        return []
    return [
        Warning(
            f"USAGE_RETENTION_DAYS={settings.USAGE_RETENTION_DAYS} may archive a month's usage records before its "
            "statement is issued: that month's usage would then show as one line without its services.",
            hint=f"Keep USAGE_RETENTION_DAYS at {STATEMENT_RETENTION_DAYS_MIN} or more (docs/statements.md).",
            id="billing_site.W003",
        )
    ]
