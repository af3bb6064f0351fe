from django.urls import path

from payments import api, credits_api

urlpatterns = [
    path("balance/", api.BalanceApi.as_view(), name="balance"),
    path("ledger/", api.LedgerApi.as_view(), name="ledger"),
    path("payments/", api.PaymentListApi.as_view(), name="payments"),
    path("payments/recharge/", api.RechargeApi.as_view(), name="recharge"),
    path("payments/<int:payment_id>/", api.PaymentDetailApi.as_view(), name="payment"),
    path("payments/<int:payment_id>/receipt/", api.PaymentReceiptApi.as_view(), name="payment-receipt"),
    path("payments/webhooks/<slug:provider>/", api.WebhookApi.as_view(), name="payment-webhook"),
    path("redeem/", api.RedeemApi.as_view(), name="redeem"),
    path("auto-recharge/", api.AutoRechargeApi.as_view(), name="auto-recharge"),
    path("admin/organizations/<slug:slug>/adjust/", api.AdjustApi.as_view(), name="admin-adjust"),
    path("admin/organizations/<slug:slug>/grants/", credits_api.AdminGrantApi.as_view(), name="admin-grants"),
    path("grants/", credits_api.GrantListApi.as_view(), name="grants"),
    path("budgets/", credits_api.BudgetListCreateApi.as_view(), name="budgets"),
    path("budgets/<int:budget_id>/", credits_api.BudgetDetailApi.as_view(), name="budget"),
]
