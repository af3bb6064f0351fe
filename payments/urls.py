from django.urls import path

from payments import api

urlpatterns = [
    path("balance/", api.BalanceApi.as_view(), name="balance"),
    path("ledger/", api.LedgerApi.as_view(), name="ledger"),
    path("admin/organizations/<slug:slug>/adjust/", api.AdjustApi.as_view(), name="admin-adjust"),
]
