import importlib

from django.db import migrations

groups = importlib.import_module("metering.migrations.0003_staff_groups")

PLAN_MODELS = [
    ("metering", model)
    for model in ("plan", "planallowance", "subscription", "subscriptioncharge", "usageposition", "volumetrueup")
]
# Billing admins define plans and what they include; Support may look. Subscriptions and their charges
# change only through the subscription services, never by hand.
BILLING_EXTRA = [
    ("metering", "add_plan"),
    ("metering", "change_plan"),
    ("metering", "add_planallowance"),
    ("metering", "change_planallowance"),
    ("metering", "delete_planallowance"),
]


def extend_groups(apps, schema_editor):
    groups.create_groups(apps, schema_editor, extra_view=PLAN_MODELS, extra_billing=BILLING_EXTRA)


class Migration(migrations.Migration):
    dependencies = [("metering", "0011_validate_usage_cached_check_v2")]

    operations = [migrations.RunPython(extend_groups, migrations.RunPython.noop)]
