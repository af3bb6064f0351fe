import importlib

from django.db import migrations

groups = importlib.import_module("metering.migrations.0003_staff_groups")

# Support and billing admins look at statements and download them; nobody changes one.
STATEMENT_MODELS = [("statements", "statement"), ("statements", "statementline")]


def extend_groups(apps, schema_editor):
    groups.create_groups(apps, schema_editor, extra_view=STATEMENT_MODELS)


class Migration(migrations.Migration):
    dependencies = [
        ("statements", "0001_initial"),
        ("metering", "0003_staff_groups"),
    ]

    operations = [migrations.RunPython(extend_groups, migrations.RunPython.noop)]
