from django.db import migrations, models

# Idempotency keys become unique per (organization, mode): a test-mode event or hold can no longer
# take the key of a live one. The new unique indexes are built before the old ones go, so a key is
# never unguarded. Holds must now reserve a positive amount: the hold is what bounds an over-capture.


class Migration(migrations.Migration):
    dependencies = [("metering", "0005_usage_retention_guard")]

    operations = [
        migrations.AddConstraint(
            model_name="usagerecord",
            constraint=models.UniqueConstraint(
                fields=("organization", "test", "idempotency_key"), name="usage_idempotency_key_per_org_mode"
            ),
        ),
        migrations.RemoveConstraint(model_name="usagerecord", name="usage_idempotency_key_per_org"),
        migrations.AddConstraint(
            model_name="hold",
            constraint=models.UniqueConstraint(
                fields=("organization", "test", "idempotency_key"), name="hold_idempotency_key_per_org_mode"
            ),
        ),
        migrations.RemoveConstraint(model_name="hold", name="hold_idempotency_key_per_org"),
        migrations.RemoveConstraint(model_name="hold", name="hold_amount_nonnegative"),
        migrations.AddConstraint(
            model_name="hold",
            constraint=models.CheckConstraint(condition=models.Q(("amount__gt", 0)), name="hold_amount_positive"),
        ),
    ]
