from django.urls import path

from statements import api

urlpatterns = [
    path("statements/", api.StatementListApi.as_view(), name="statements"),
    path("statements/<int:statement_id>/", api.StatementDetailApi.as_view(), name="statement"),
    path("statements/<int:statement_id>/pdf/", api.StatementPdfApi.as_view(), name="statement-pdf"),
    path("statements/<int:statement_id>/csv/", api.StatementCsvApi.as_view(), name="statement-csv"),
]
