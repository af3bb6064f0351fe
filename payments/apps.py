from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Wallets, ledger and payments"

    def ready(self) -> None:
        from accounts.signals import organization_created
        from payments import ledger, tasks

        organization_created.connect(ledger.wallet_open_for_organization, dispatch_uid="payments.wallet_open")
        ledger.low_balance_crossed_signal.connect(tasks.low_balance_alert_enqueue, dispatch_uid="payments.low_balance_alert")
