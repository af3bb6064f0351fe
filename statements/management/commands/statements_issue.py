"""`manage.py statements_issue [--organization SLUG]`: issue every closed month not yet issued, now,
as the beat task does (docs/statements.md). Safe to run any time, beside the beat task too."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Organization
from statements.services import organizations_due, statements_issue_for_organization


class Command(BaseCommand):
    help = "Issue the statements of every closed month not yet issued (one organization, or all that are due)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--organization", metavar="SLUG", help="Only this organization (every month it is due).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["organization"]:
            organization = Organization.objects.filter(slug=options["organization"]).first()
            if organization is None:
                raise CommandError(f"No organization with the slug {options['organization']!r}.")
            organization_ids = [organization.pk]
        else:
            organization_ids = organizations_due()
        issued = 0
        for organization_id in organization_ids:
            for statement in statements_issue_for_organization(organization_id=organization_id):
                issued += 1
                self.stdout.write(
                    f"  {statement.organization_id}: S-{statement.number:06d} {statement.period_start:%B %Y}"
                    f" closing {statement.closing_balance.normalize():f} {statement.currency}"
                )
        self.stdout.write(f"{issued} statement(s) issued.")
