from django.db import migrations, models

# Cached input tokens (a TOKENS price may set a rate for them; a usage record keeps how many there were
# and the rate they were charged at). The new columns are nullable, so adding them rewrites nothing.
# The usage record's check is added NOT VALID (no scan under the table's exclusive lock) and validated
# by 0009 in its own transaction, where writes go on while it scans.

USAGE_CACHED_CHECK = (
    "(cached_input_price IS NULL AND cached_input_tokens IS NULL)"
    " OR (cached_input_price IS NOT NULL AND cached_input_tokens IS NOT NULL AND cached_input_tokens >= 0"
    " AND cached_input_tokens <= input_tokens AND input_tokens IS NOT NULL)"
)


class Migration(migrations.Migration):
    dependencies = [("metering", "0007_usage_rollup_stripe")]

    operations = [
        migrations.AddField(
            model_name="price",
            name="cached_input_price",
            field=models.DecimalField(
                blank=True,
                decimal_places=12,
                help_text="TOKENS, optional: per 1,000,000 cached input tokens. Empty: they cost the input price.",
                max_digits=28,
                null=True,
            ),
        ),
        migrations.RemoveConstraint(model_name="price", name="price_nonnegative"),
        migrations.AddConstraint(
            model_name="price",
            constraint=models.CheckConstraint(
                condition=models.Q(models.Q(("input_price__isnull", True), ("input_price__gte", 0), _connector="OR"))
                & models.Q(models.Q(("output_price__isnull", True), ("output_price__gte", 0), _connector="OR"))
                & models.Q(models.Q(("cached_input_price__isnull", True), ("cached_input_price__gte", 0), _connector="OR"))
                & models.Q(models.Q(("unit_price__isnull", True), ("unit_price__gte", 0), _connector="OR")),
                name="price_nonnegative",
            ),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="cached_input_tokens",
            field=models.BigIntegerField(
                blank=True,
                help_text="TOKENS: how many of the input tokens were cached (empty when not reported).",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="cached_input_price",
            field=models.DecimalField(
                blank=True,
                decimal_places=12,
                help_text="The rate the cached input tokens were charged at (the input price when none was set).",
                max_digits=28,
                null=True,
            ),
        ),
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE metering_usagerecord ADD CONSTRAINT usage_cached_input_within_input"
                    f" CHECK ({USAGE_CACHED_CHECK}) NOT VALID",
                    reverse_sql="ALTER TABLE metering_usagerecord DROP CONSTRAINT usage_cached_input_within_input",
                )
            ],
            state_operations=[
                migrations.AddConstraint(
                    model_name="usagerecord",
                    constraint=models.CheckConstraint(
                        condition=models.Q(
                            models.Q(("cached_input_price__isnull", True), ("cached_input_tokens__isnull", True)),
                            models.Q(
                                ("cached_input_price__isnull", False),
                                ("cached_input_tokens__gte", 0),
                                ("cached_input_tokens__isnull", False),
                                ("cached_input_tokens__lte", models.F("input_tokens")),
                                ("input_tokens__isnull", False),
                            ),
                            _connector="OR",
                        ),
                        name="usage_cached_input_within_input",
                    ),
                )
            ],
        ),
    ]
