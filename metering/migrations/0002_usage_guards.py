from django.db import migrations

from billing_site.db_guards import immutable_table_sql

usage_forward, usage_reverse = immutable_table_sql("metering_usagerecord")

# A price row is history: never changed; deletable only while it has not yet taken effect.
PRICE_GUARD = """
CREATE OR REPLACE FUNCTION tollgate_guard_price() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.effective_from > now() THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'prices are never edited in place (% refused); add a new price row', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER metering_price_guard BEFORE UPDATE OR DELETE ON metering_price
FOR EACH ROW EXECUTE FUNCTION tollgate_guard_price();
"""


class Migration(migrations.Migration):
    dependencies = [("metering", "0001_initial"), ("payments", "0002_ledger_guards")]

    operations = [
        migrations.RunSQL(usage_forward, usage_reverse),
        migrations.RunSQL(
            PRICE_GUARD,
            reverse_sql="DROP TRIGGER IF EXISTS metering_price_guard ON metering_price;"
            "DROP FUNCTION IF EXISTS tollgate_guard_price();",
        ),
    ]
