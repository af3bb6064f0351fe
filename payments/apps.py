import logging

from django.apps import AppConfig

logger = logging.getLogger(__name__)


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Wallets, ledger and payments"

    def ready(self) -> None:
        from django.conf import settings

        from accounts.signals import organization_created
        from billing_site.metrics import state_gauge_register
        from payments import checks, ledger, selectors, tasks
        from payments.providers import providers_enabled

        state_gauge_register("tollgate_payments_pending", "Payments waiting for their provider", selectors.payments_pending_count)
        organization_created.connect(ledger.wallet_open_for_organization, dispatch_uid="payments.wallet_open")
        ledger.low_balance_crossed_signal.connect(tasks.low_balance_alert_enqueue, dispatch_uid="payments.low_balance_alert")
        ledger.budget_alert_signal.connect(tasks.budget_alert_enqueue, dispatch_uid="payments.budget_alert")
        ledger.auto_recharge_due_signal.connect(tasks.auto_recharge_due, dispatch_uid="payments.auto_recharge_due")
        # Said at every start of every process, so nobody runs a money-minting sandbox unawares.
        if checks.sandbox_enabled_in_production():
            logger.warning(checks.SANDBOX_ENABLED_IN_PRODUCTION)
        elif "sandbox" in settings.PAYMENT_PROVIDERS and "sandbox" not in providers_enabled():
            logger.warning(
                "PAYMENT_PROVIDERS names the sandbox, which stays off in production without SANDBOX_IN_PRODUCTION=true."
            )
