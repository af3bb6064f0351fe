from django.contrib.auth.management import create_permissions
from django.db import migrations

VIEW_MODELS = [
    ("accounts", "user"), ("accounts", "organization"), ("accounts", "membership"), ("accounts", "apikey"),
    ("payments", "wallet"), ("payments", "transfer"), ("payments", "ledgerentry"),
    ("metering", "service"), ("metering", "price"), ("metering", "usagerecord"), ("metering", "usagerollup"), ("metering", "hold"),
]
# Billing admins manage rates, services, wallet limits and post adjustments (add_transfer).
BILLING_EXTRA = [
    ("metering", "add_service"), ("metering", "change_service"), ("metering", "add_price"), ("metering", "delete_price"),
    ("payments", "change_wallet"), ("payments", "add_transfer"), ("accounts", "change_organization"),
]


def create_groups(apps, schema_editor, extra_view=(), extra_billing=()):
    for app_config in apps.get_app_configs():
        original, app_config.models_module = getattr(app_config, "models_module", None), True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = original
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")

    def perms(pairs):
        return [Permission.objects.get(content_type__app_label=app, codename=codename) for app, codename in pairs]

    view = perms([(app, f"view_{model}") for app, model in [*VIEW_MODELS, *extra_view]])
    support, _ = Group.objects.get_or_create(name="Support")
    support.permissions.add(*view)
    billing, _ = Group.objects.get_or_create(name="Billing admins")
    billing.permissions.add(*view, *perms([*BILLING_EXTRA, *extra_billing]))


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=["Support", "Billing admins"]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0002_usage_guards"),
        ("payments", "0002_ledger_guards"),
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
