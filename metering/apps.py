from django.apps import AppConfig


class MeteringConfig(AppConfig):
    name = "metering"
    verbose_name = "Services, prices and usage"

    def ready(self) -> None:
        from billing_site.metrics import state_gauge_register
        from metering import selectors
        from metering.models import Price, Service

        selectors.PRICED_SERVICES.invalidated_by(Service, creation=False)
        selectors.PRICED_SERVICES.invalidated_by(Price, creation=True)

        state_gauge_register("tollgate_holds_active", "Holds currently reserving money", selectors.holds_active_count)
