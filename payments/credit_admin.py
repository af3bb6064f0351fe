"""Back office for credit grants and budgets (docs/credits.md). A grant is made only through
`grant_create` (a `grant` transfer and the grant, never a raw save); budgets change only through the
budget services, which keep the current period's spend row in step. Allocations and spend rows are
the ledger's: read-only here."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.forms.models import construct_instance
from django.http import HttpRequest

from billing_site.admin import (
    AMOUNT_INPUTS,
    AmountInput,
    LabelledForm,
    LargeTableAdmin,
    OrganizationFilter,
    money_cell,
)
from billing_site.errors import DomainError
from payments import budgets, credits
from payments.models import (
    GRANT_PRIORITY_DEFAULT,
    GRANT_PRIORITY_MAX,
    GRANT_PRIORITY_MIN,
    Budget,
    BudgetSpend,
    CreditGrant,
    GrantAllocation,
    GrantCategory,
    GrantSource,
)


class GrantMoney:
    @admin.display(description="amount")
    def amount_shown(self, grant: CreditGrant) -> str:
        return money_cell(grant.amount, settings.CURRENCY)

    @admin.display(description="remaining")
    def remaining_shown(self, grant: CreditGrant) -> str:
        return money_cell(grant.remaining, settings.CURRENCY)


class GrantForm(LabelledForm):
    """The add form: its terms are checked by `grant_spec_validate`, and the save is `grant_create`."""

    priority = forms.IntegerField(
        min_value=GRANT_PRIORITY_MIN,
        max_value=GRANT_PRIORITY_MAX,
        initial=GRANT_PRIORITY_DEFAULT,
        help_text="1–100; lower burns first.",
    )
    reason = forms.CharField(
        max_length=500, widget=forms.Textarea(attrs={"rows": 3}), help_text="Kept with the ledger entry; the customer may see it."
    )

    class Meta:
        model = CreditGrant
        fields = ["organization", "amount", "category", "priority", "expires_at", "reason"]
        widgets = {"amount": AmountInput}

    def spec(self) -> credits.GrantSpec:
        data = self.cleaned_data
        return credits.GrantSpec(
            amount=data["amount"],
            category=GrantCategory(data["category"]),
            priority=data["priority"],
            expires_at=data.get("expires_at"),
            reason=data["reason"],
        )

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if not self.errors:
            try:
                credits.grant_spec_validate(self.spec())
            except DomainError as error:
                for name, message in error.details.items():
                    self.add_error(name if name in self.fields else None, message)
        return cleaned

    def _post_clean(self) -> None:
        # The model's own checks need the transfer grant_create writes; the spec's rules are checked above.
        self.instance = construct_instance(self, self.instance, self._meta.fields, self._meta.exclude)


@admin.register(CreditGrant)
class CreditGrantAdmin(GrantMoney, admin.ModelAdmin):
    list_display = [
        "id",
        "organization",
        "category",
        "amount_shown",
        "remaining_shown",
        "priority",
        "expires_at",
        "source",
        "created_by",
        "created_at",
    ]
    list_filter = [OrganizationFilter, "category", "source"]
    list_select_related = ["organization", "created_by"]
    search_fields = ["reason"]
    date_hierarchy = "created_at"
    form = GrantForm
    formfield_overrides = AMOUNT_INPUTS
    raw_id_fields = ["organization"]
    readonly_fields = ["amount_shown", "remaining_shown", "transfer", "expiry_transfer", "source", "created_by", "created_at"]
    show_full_result_count = False

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return list(GrantForm.Meta.fields)
        return ["organization", "category", "priority", "expires_at", "reason", *self.readonly_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return []
        return ["organization", "category", "priority", "expires_at", "reason", *self.readonly_fields]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a grant's money changes only in the ledger's statements

    def changeform_view(self, request: HttpRequest, object_id: Any = None, form_url: str = "", extra_context: Any = None) -> Any:
        # Without the admin's own transaction around the view: grant_create is a durable money
        # operation, the outermost transaction of its own.
        return self._changeform_view(request, object_id, form_url, extra_context)  # type: ignore[attr-defined]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: CreditGrant, form: GrantForm, change: bool) -> None:
        grant = credits.grant_create(
            organization_id=form.cleaned_data["organization"].pk,
            spec=form.spec(),
            created_by_id=request.user.pk,
            source=GrantSource.STAFF,
        )
        # The admin logs and redirects to the object it thinks it saved: make that the grant just made.
        obj.pk, obj.transfer_id, obj.remaining, obj.created_at = grant.pk, grant.transfer_id, grant.remaining, grant.created_at


@admin.register(GrantAllocation)
class GrantAllocationAdmin(LargeTableAdmin):  # a row per grant a debit drew from: it grows like the ledger
    list_display = ["id", "organization", "grant", "transfer", "amount_shown", "created_at"]
    list_filter = [OrganizationFilter]
    list_select_related = ["organization"]
    show_full_result_count = False

    @admin.display(description="amount")
    def amount_shown(self, allocation: GrantAllocation) -> str:
        return money_cell(allocation.amount, settings.CURRENCY)


class BudgetForm(LabelledForm):
    """Created through `budget_create`, changed through `budget_update` (amount and mode only)."""

    class Meta:
        model = Budget
        fields = ["organization", "api_key", "period", "amount", "mode"]
        widgets = {"amount": AmountInput}

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if self.errors:
            return cleaned
        if self.instance.pk is None:
            organization = cleaned["organization"]
            api_key = cleaned.get("api_key")
            errors = budgets.budget_create_errors(
                organization_id=organization.pk,
                api_key_id=api_key.pk if api_key else None,
                period=cleaned["period"],
                amount=cleaned["amount"],
                mode=cleaned["mode"],
            )
        else:
            errors = budgets.budget_create_errors(
                organization_id=self.instance.organization_id,
                api_key_id=None,
                period=self.instance.period,
                amount=cleaned["amount"],
                mode=cleaned["mode"],
            )
        for name, message in errors.items():
            self.add_error(name if name in self.fields else None, message)
        return cleaned


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ["id", "organization", "api_key", "period", "amount_shown", "mode", "spent_shown", "updated_at"]
    list_filter = [OrganizationFilter, "period", "mode"]
    list_select_related = ["organization", "api_key"]
    form = BudgetForm
    formfield_overrides = AMOUNT_INPUTS
    raw_id_fields = ["organization", "api_key"]
    show_full_result_count = False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [] if obj is None else ["organization", "api_key", "period", "spent_shown", "created_at", "updated_at"]

    @admin.display(description="amount")
    def amount_shown(self, budget: Budget) -> str:
        return money_cell(budget.amount, settings.CURRENCY)

    @admin.display(description="spent this period")
    def spent_shown(self, budget: Budget) -> str:
        return money_cell(budgets.budget_status(budget=budget).spent, settings.CURRENCY)

    def save_model(self, request: HttpRequest, obj: Budget, form: BudgetForm, change: bool) -> None:
        data = form.cleaned_data
        if change:
            saved = budgets.budget_update(budget=obj, amount=data["amount"], mode=data["mode"])
        else:
            saved = budgets.budget_create(
                organization_id=data["organization"].pk,
                api_key_id=data["api_key"].pk if data.get("api_key") else None,
                period=data["period"],
                amount=data["amount"],
                mode=data["mode"],
            )
        obj.pk, obj.created_at, obj.updated_at = saved.pk, saved.created_at, saved.updated_at

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # The spend rows go with their budget (budget_delete): they need no delete right of their own.
        deleted, counts, _, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, set(), protected

    def delete_model(self, request: HttpRequest, obj: Budget) -> None:
        budgets.budget_delete(budget=obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for budget in queryset:
            budgets.budget_delete(budget=budget)


@admin.register(BudgetSpend)
class BudgetSpendAdmin(LargeTableAdmin):  # a row per budget per period
    list_display = ["id", "organization", "budget", "period_start", "spent_shown", "amount_shown", "ceiling", "alerted"]
    list_filter = [OrganizationFilter]
    list_select_related = ["organization", "budget"]
    show_full_result_count = False

    @admin.display(description="spent")
    def spent_shown(self, spend: BudgetSpend) -> str:
        return money_cell(spend.spent, settings.CURRENCY)

    @admin.display(description="amount")
    def amount_shown(self, spend: BudgetSpend) -> str:
        return money_cell(spend.amount, settings.CURRENCY)
