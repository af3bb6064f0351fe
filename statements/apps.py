from django.apps import AppConfig


class StatementsConfig(AppConfig):
    name = "statements"
    verbose_name = "Statements"

    def ready(self) -> None:
        from statements.services import statement_issued_signal
        from statements.tasks import statement_email_enqueue

        statement_issued_signal.connect(statement_email_enqueue, dispatch_uid="statements.statement_email")
