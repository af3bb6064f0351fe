from django.db import migrations

# Checks every existing usage record against the constraint 0008 added NOT VALID. VALIDATE CONSTRAINT
# takes a lock that lets reads and writes go on; a separate migration, so 0008's exclusive lock is
# already released when this scan runs.


class Migration(migrations.Migration):
    dependencies = [("metering", "0008_cached_input_tokens")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE metering_usagerecord VALIDATE CONSTRAINT usage_cached_input_within_input",
            reverse_sql=migrations.RunSQL.noop,
        )
    ]
