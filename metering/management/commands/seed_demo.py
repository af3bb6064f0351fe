"""`manage.py seed_demo`: the demo that `make run` starts with. Idempotent: a second run changes nothing."""

import io
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.hashers import check_password
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connection, transaction
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiKey, ApiKeyMode, Organization, Role, User
from accounts.tenancy import Tenant
from metering import services as metering_services
from metering.models import CalcMethod, Plan, Price, Service
from metering.services.catalog import PriceSpec
from metering.services.events import UsageEvent, event_price
from metering.services.plans import PlanChange, plan_save
from metering.services.usage_sql import usage_debit_in_one_statement
from payments import ledger
from payments.budgets import budget_create
from payments.credits import GrantSpec, grant_create
from payments.models import Account, BudgetMode, BudgetPeriod, GrantCategory, LedgerEntry, TransferKind, Wallet

ADMIN_EMAIL = "admin@tollgate.local"
OWNER_EMAIL = "owner@demo.tollgate.local"
ORGANIZATION_NAME = "Demo AI Co"
PRICES_FROM = datetime(2025, 1, 1, tzinfo=UTC)

# (slug, name, calc_method, prices) — units per docs/contract.md §3: tokens (cached input tokens too) per 1M,
# characters and words per 1K, images per 512×512 tile, requests per request.
SERVICES: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    (
        "gpt-4o",
        "GPT-4o",
        CalcMethod.TOKENS,
        {"input_price": Decimal("2.50"), "output_price": Decimal("10.00"), "cached_input_price": Decimal("1.25")},
    ),
    (
        "gpt-4o-mini",
        "GPT-4o mini",
        CalcMethod.TOKENS,
        {"input_price": Decimal("0.15"), "output_price": Decimal("0.60"), "cached_input_price": Decimal("0.075")},
    ),
    ("translate", "Translation", CalcMethod.CHAR_COUNT, {"unit_price": Decimal("0.020")}),
    ("summarize-words", "Summarization", CalcMethod.WORD_COUNT, {"unit_price": Decimal("0.040")}),
    ("dall-e-3", "DALL·E 3", CalcMethod.IMAGE_RESOLUTION, {"unit_price": Decimal("0.010")}),
    ("moderation", "Moderation", CalcMethod.REQUEST, {"unit_price": Decimal("0.0005")}),
    (
        "text-embedding-3-small",
        "Embeddings (tiered)",
        CalcMethod.TOKENS,
        {
            "model": "tiered",
            "tiers": [
                {"up_to": 10_000_000, "input_price": "0.02", "output_price": "0"},
                {"up_to": None, "input_price": "0.01", "output_price": "0"},
            ],
        },
    ),
)

# Two plans a customer may choose on the dashboard's Plan page (docs/pricing.md, Plans).
PLANS = (
    PlanChange(
        slug="starter",
        name="Starter",
        monthly_fee=Decimal("20"),
        description="5M GPT-4o mini tokens and 10,000 moderation requests included each month.",
        included={"gpt-4o-mini": 5_000_000, "moderation": 10_000},
    ),
    PlanChange(
        slug="pro",
        name="Pro",
        monthly_fee=Decimal("99"),
        description="50M GPT-4o mini tokens and 500 image tiles included, and GPT-4o at a lower rate.",
        included={"gpt-4o-mini": 50_000_000, "dall-e-3": 500},
        prices={
            "gpt-4o": PriceSpec(
                fields={"input_price": Decimal("2.00"), "output_price": Decimal("8.00"), "cached_input_price": Decimal("1.00")},
                effective_from=PRICES_FROM,
            )
        },
    ),
)

# Serializes concurrent seeds (two `make run`s at once) for the whole command, across its transactions.
_ADVISORY_LOCK_KEY = 7_346_021_901


class Command(BaseCommand):
    help = "Create the demo staff user, organization, services, prices, balance and API keys, once."

    def handle(self, *args, **options) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [_ADVISORY_LOCK_KEY])
        try:
            self._seed()
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_ADVISORY_LOCK_KEY])

    def _seed(self) -> None:
        admin_password = os.environ.get("DEMO_ADMIN_PASSWORD", "tollgate-admin")
        owner_password = os.environ.get("DEMO_OWNER_PASSWORD", "tollgate-demo")
        with transaction.atomic():
            admin = _user(email=ADMIN_EMAIL, password=admin_password, staff=True)
            owner = _user(email=OWNER_EMAIL, password=owner_password, staff=False)
            organization = Organization.objects.filter(
                name=ORGANIZATION_NAME, memberships__user=owner, memberships__role=Role.OWNER
            ).first() or account_services.organization_create(name=ORGANIZATION_NAME, owner=owner)
            new_services = _services(created_by=admin)
            for plan in PLANS:
                if not Plan.objects.filter(slug=plan.slug).exists():
                    plan_save(change=plan, created_by_id=admin.pk)
        # The gateway's sandbox upstream and routes for the demo services: by the command's name, since
        # the gateway app is a higher floor than this one.
        gateway_output = io.StringIO()
        call_command("gateway_seed_demo", stdout=gateway_output)

        # The starting balance goes through the ledger like any money; an organization with any entry
        # already got it. It and a month of usage are dated last month, so the demo has a closed month
        # and its statement (docs/statements.md).
        credited = False
        if not LedgerEntry.objects.filter(organization=organization).exists():
            _last_month_history(organization=organization, admin=admin, owner=owner)
            credited = True
            # A welcome grant that burns first and expires, and a soft monthly budget, so the Credits
            # and Budgets pages show something (docs/credits.md).
            grant_create(
                organization_id=organization.pk,
                spec=GrantSpec(
                    amount=Decimal("5"),
                    category=GrantCategory.PROMOTIONAL,
                    priority=10,
                    expires_at=timezone.now() + timedelta(days=5),
                    reason="Demo welcome credit",
                ),
                created_by_id=admin.pk,
            )
            budget_create(
                organization_id=organization.pk,
                api_key_id=None,
                period=BudgetPeriod.MONTH,
                amount=Decimal("50"),
                mode=BudgetMode.SOFT,
            )

        # Last month's statement, by the command's name (statements is a higher floor than this one).
        statements_output = io.StringIO()
        call_command("statements_issue", organization=organization.slug, stdout=statements_output)

        keys = []
        if not ApiKey.objects.filter(organization=organization).exists():
            for mode, name in ((ApiKeyMode.TEST, "Demo test key"), (ApiKeyMode.LIVE, "Demo live key")):
                keys.append(account_services.api_key_create(organization=organization, name=name, mode=mode, created_by=owner))

        self._report(
            admin=admin,
            owner=owner,
            admin_password=admin_password,
            owner_password=owner_password,
            organization=organization,
            new_services=new_services,
            gateway_routes=gateway_output.getvalue(),
            credited=credited,
            keys=keys,
        )

    def _report(
        self, *, admin, owner, admin_password, owner_password, organization, new_services, gateway_routes, credited, keys
    ) -> None:
        write = self.stdout.write
        write("Demo logins (email / password)")
        write(f"  staff, /admin/:     {ADMIN_EMAIL} / {_shown_password(admin, admin_password)}")
        write(f"  organization owner: {OWNER_EMAIL} / {_shown_password(owner, owner_password)}")
        write(f"  organization:       {organization.name} (slug {organization.slug})")
        if new_services:
            write(f"  services created:   {', '.join(new_services)}")
        if gateway_routes:
            write(gateway_routes.rstrip("\n"))
        balance = Wallet.objects.get(organization=organization).balance
        credit_note = f" (credited {settings.STARTING_DEMO_BALANCE} and used some last month)" if credited else ""
        write(f"  balance:            {balance.normalize():f} {settings.CURRENCY}{credit_note}")
        latest = organization.statements.order_by("-period_start").first()
        if latest is not None:
            write(f"  statement:          S-{latest.number:06d} for {latest.period_start:%B %Y} (dashboard: Statements)")
        if credited:
            write("  credits:            a 5.00 welcome grant expiring in 5 days; a soft monthly budget of 50.00")
        if keys:
            write("API keys (shown once, store them now):")
            for created in keys:
                write(f"  {created.api_key.mode:<4}  {created.secret}")
        else:
            write("API keys: the demo organization already has keys; create more in the API (POST /api/v1/api-keys/).")


# Last month's demo usage: (day of the month, service, quantities).
LAST_MONTH_USAGE: tuple[tuple[int, str, dict[str, int]], ...] = (
    (3, "gpt-4o", {"input_tokens": 123_457, "output_tokens": 31_211}),
    (4, "translate", {"characters": 18_342}),
    (6, "moderation", {}),
    (9, "gpt-4o", {"input_tokens": 88_001, "output_tokens": 12_907}),
    (11, "dall-e-3", {"width": 1024, "height": 1024, "images": 3}),
    (14, "summarize-words", {"words": 2_750}),
    (17, "gpt-4o-mini", {"input_tokens": 1_250_003, "output_tokens": 402_118}),
    (20, "translate", {"characters": 7_777}),
    (24, "moderation", {}),
    (27, "gpt-4o", {"input_tokens": 45_678, "output_tokens": 9_876}),
)


def _last_month_history(*, organization: Organization, admin: User, owner: User) -> None:
    """The demo organization as if it had joined last month: created then, credited its starting
    balance on the 2nd and billed for usage through the month, each event debited by the same
    statement as the API's (dated then), so last month closes and has its statement."""
    last_month = (
        timezone.now().astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    ).replace(day=1)
    Organization.objects.filter(pk=organization.pk).update(created_at=last_month + timedelta(days=1))
    organization.refresh_from_db()
    ledger.transfer_post(
        organization_id=organization.pk,
        kind=TransferKind.ADJUSTMENT,
        amount=settings.STARTING_DEMO_BALANCE,
        counter_account=Account.ADJUSTMENTS,
        reference="staff",
        memo="Demo starting balance",
        created_by_id=admin.pk,
        now=last_month + timedelta(days=1, hours=9),
    )
    tenant = Tenant(organization=organization, user=owner, api_key=None, role=Role.OWNER)
    for day, slug, quantities in LAST_MONTH_USAGE:
        event = UsageEvent(service=slug, idempotency_key=f"demo-{slug}-{day}", data=quantities)
        priced = event_price(event, organization_id=organization.pk)
        usage_debit_in_one_statement(priced, tenant=tenant, now=last_month + timedelta(days=day - 1, hours=14, minutes=day))


def _shown_password(user: User, password: str) -> str:
    # hashers.check_password, not user.check_password: the latter may rehash and save.
    return password if check_password(password, user.password) else "(changed since it was seeded)"


def _user(*, email: str, password: str, staff: bool) -> User:
    """The user with this email; created with `password` if missing (an existing one is left as is)."""
    user = User.objects.filter(email=email).first()
    if user is not None:
        return user
    if staff:
        return User.objects.create_superuser(email=email, password=password)
    return User.objects.create_user(email=email, password=password)


def _services(*, created_by: User) -> list[str]:
    """Create the demo services, each with a general price in force, unless they already exist."""
    created = []
    for slug, name, calc_method, prices in SERVICES:
        service = Service.objects.filter(slug=slug).first()
        if service is None:
            service = metering_services.service_create(slug=slug, name=name, calc_method=calc_method)
            created.append(slug)
        if not Price.objects.filter(service=service, organization__isnull=True).exists():
            metering_services.price_create(
                service=service,
                organization_id=None,
                effective_from=PRICES_FROM,
                created_by_id=created_by.pk,
                **dict[str, Any](prices),
            )
    return created
