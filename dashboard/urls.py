"""The customer dashboard, mounted at the site root: the sign-in pages at /, the app under /dashboard/."""

from django.urls import path

from dashboard.views import auth, billing, credits, keys, pages, plan, settings, team

app_name = "dashboard"

urlpatterns = [
    path("", auth.home, name="home"),
    path("signup/", auth.signup, name="signup"),
    path("login/", auth.LoginView.as_view(), name="login"),
    path("logout/", auth.LogoutView.as_view(), name="logout"),
    path("password-reset/", auth.PasswordResetView.as_view(), name="password_reset"),
    path("password-reset/sent/", auth.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("reset/<uidb64>/<token>/", auth.PasswordResetConfirmView.as_view(), name="password_reset_confirm"),
    path("reset/done/", auth.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("invite/<str:token>/", auth.invitation, name="invitation"),
    path("welcome/", pages.welcome, name="welcome"),
    path("dashboard/", pages.overview, name="overview"),
    path("dashboard/usage/", pages.usage, name="usage"),
    path("dashboard/usage/export.csv", pages.usage_export, name="usage_export"),
    path("dashboard/pricing/", pages.pricing, name="pricing"),
    path("dashboard/plan/", plan.plan, name="plan"),
    path("dashboard/plan/choose/", plan.plan_choose, name="plan_choose"),
    path("dashboard/plan/cancel/", plan.plan_cancel, name="plan_cancel"),
    path("dashboard/keys/", keys.keys, name="keys"),
    path("dashboard/keys/<int:key_id>/created/", keys.key_created, name="key_created"),
    path("dashboard/keys/<int:key_id>/revoke/", keys.key_revoke, name="key_revoke"),
    path("dashboard/billing/", billing.billing, name="billing"),
    path("dashboard/billing/transactions.csv", billing.transactions_export, name="transactions_export"),
    path("dashboard/billing/redeem/", billing.redeem, name="redeem"),
    path("dashboard/billing/auto-recharge/", billing.auto_recharge_update, name="auto_recharge"),
    path("dashboard/payments/<int:payment_id>/", billing.payment, name="payment"),
    path("dashboard/payments/<int:payment_id>/status/", billing.payment_status, name="payment_status"),
    path("dashboard/payments/<int:payment_id>/receipt.pdf", billing.payment_receipt, name="payment_receipt"),
    path("dashboard/credits/", credits.credits, name="credits"),
    path("dashboard/budgets/", credits.budgets, name="budgets"),
    path("dashboard/budgets/<int:budget_id>/edit/", credits.budget_edit, name="budget_edit"),
    path("dashboard/budgets/<int:budget_id>/delete/", credits.budget_delete, name="budget_delete"),
    path("dashboard/team/", team.team, name="team"),
    path("dashboard/team/<int:membership_id>/role/", team.member_role, name="member_role"),
    path("dashboard/team/<int:membership_id>/remove/", team.member_remove, name="member_remove"),
    path("dashboard/team/invitations/<int:invitation_id>/revoke/", team.invitation_revoke, name="invitation_revoke"),
    path("dashboard/settings/", settings.settings_page, name="settings"),
    path("dashboard/settings/alert-secret/rotate/", settings.alert_secret_rotate, name="alert_secret_rotate"),
    path("dashboard/settings/alert-test/", settings.alert_test_send, name="alert_test_send"),
    path("dashboard/settings/organization/", settings.organization_rename, name="organization_rename"),
    path("dashboard/settings/time-zone/", settings.time_zone_set, name="time_zone_set"),
    path("dashboard/settings/billing-details/", settings.billing_details_update, name="billing_details"),
    path("dashboard/settings/password/", auth.PasswordChangeView.as_view(), name="password_change"),
    path("dashboard/switch/", settings.organization_switch, name="switch"),
]
