import importlib

from django.db import migrations

groups = importlib.import_module("metering.migrations.0003_staff_groups")

# Support may look at auto top-up settings; billing admins save an organization's Stripe card for it.
# The amounts and the switch belong to the organization's people (the API and the billing page).
AUTO_VIEW = [("payments", "autorecharge")]
AUTO_BILLING = [("payments", "add_autorecharge"), ("payments", "change_autorecharge")]


def extend_groups(apps, schema_editor):
    groups.create_groups(apps, schema_editor, extra_view=AUTO_VIEW, extra_billing=AUTO_BILLING)


class Migration(migrations.Migration):
    dependencies = [("payments", "0011_auto_recharge"), ("metering", "0012_staff_groups_plans")]

    operations = [migrations.RunPython(extend_groups, migrations.RunPython.noop)]
