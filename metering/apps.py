from django.apps import AppConfig


class MeteringConfig(AppConfig):
    name = "metering"
    verbose_name = "Services, prices and usage"

    def ready(self) -> None:
        from billing_site.metrics import state_gauge_register
        from metering import selectors, tasks
        from metering.models import PlanAllowance, Price, Service, Subscription
        from payments import ledger

        selectors.PRICED_SERVICES.invalidated_by(Service, creation=False)
        selectors.PRICED_SERVICES.invalidated_by(Price, creation=True)
        # The price in force and the allowance flag follow the organization's active plan.
        selectors.PRICED_SERVICES.invalidated_by(Subscription, creation=True)
        selectors.PRICED_SERVICES.invalidated_by(PlanAllowance, creation=True)
        ledger.wallet_credited_signal.connect(tasks.subscription_collect_enqueue, dispatch_uid="metering.subscription_collect")

        state_gauge_register("tollgate_holds_active", "Holds currently reserving money", selectors.holds_active_count)
