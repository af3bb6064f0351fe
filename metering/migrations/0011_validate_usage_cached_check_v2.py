from django.db import migrations

# Checks every existing usage record against the constraint 0010 added NOT VALID (see 0009).


class Migration(migrations.Migration):
    dependencies = [("metering", "0010_pricing_models_plans")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE metering_usagerecord VALIDATE CONSTRAINT usage_cached_input_within_input_v2",
            reverse_sql=migrations.RunSQL.noop,
        )
    ]
