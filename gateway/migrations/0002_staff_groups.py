import importlib

from django.db import migrations

groups = importlib.import_module("metering.migrations.0003_staff_groups")

GATEWAY_MODELS = [("gateway", model) for model in ("upstream", "modelroute", "routeupstream")]
# Billing admins configure the gateway; Support may look (never at a key: it is not shown to anyone).
BILLING_EXTRA = [(app, f"{action}_{model}") for app, model in GATEWAY_MODELS for action in ("add", "change", "delete")]


def extend_groups(apps, schema_editor):
    groups.create_groups(apps, schema_editor, extra_view=GATEWAY_MODELS, extra_billing=BILLING_EXTRA)


class Migration(migrations.Migration):
    dependencies = [("gateway", "0001_initial"), ("metering", "0004_staff_groups_payments")]

    operations = [migrations.RunPython(extend_groups, migrations.RunPython.noop)]
