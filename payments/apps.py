from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Wallets, ledger and payments"

    def ready(self) -> None:
        from accounts.signals import organization_created
        from payments import ledger

        organization_created.connect(ledger.wallet_open_for_organization, dispatch_uid="payments.wallet_open")
