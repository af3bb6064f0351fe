import logging

from django.apps import AppConfig

logger = logging.getLogger(__name__)


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "AI gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.signals import api_key_models_check
        from gateway import checks, selectors, services
        from gateway.models import ModelRoute, RouteUpstream, Upstream
        from metering.models import Service

        # A new route, upstream or link changes the cached table of routes (unknown names are answered
        # from it too), so creations count; a service's slug, method or retirement shows in its routes.
        for model in (Upstream, ModelRoute, RouteUpstream):
            selectors.GATEWAY_ROUTES.invalidated_by(model, creation=True)
        selectors.GATEWAY_ROUTES.invalidated_by(Service, creation=False)
        api_key_models_check.connect(services.api_key_models_check, dispatch_uid="gateway.api_key_models_check")
        # Said at every start of every process: `check` refuses, but gunicorn runs no checks.
        for problem in checks.encryption_keys_check(None):
            logger.error("%s %s", problem.msg, problem.hint)
