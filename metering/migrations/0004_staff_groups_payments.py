import importlib

from django.db import migrations

groups = importlib.import_module("metering.migrations.0003_staff_groups")

PAYMENT_MODELS = [("payments", m) for m in ("payment", "webhookevent", "refund", "redemptioncode", "redemption")]
BILLING_EXTRA = [("payments", "add_refund"), ("payments", "add_redemptioncode")]


def extend_groups(apps, schema_editor):
    groups.create_groups(apps, schema_editor, extra_view=PAYMENT_MODELS, extra_billing=BILLING_EXTRA)


class Migration(migrations.Migration):
    dependencies = [("metering", "0003_staff_groups"), ("payments", "0003_payments_refunds_codes")]

    operations = [migrations.RunPython(extend_groups, migrations.RunPython.noop)]
