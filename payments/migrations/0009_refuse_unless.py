from django.db import migrations

# A guarded posting (payments/ledger.py `post_statement`) calls this in its answer: when its guard wrote
# but the wallet refused, the whole statement must fail so the guard's write is undone with it.
FORWARD = """
CREATE OR REPLACE FUNCTION tollgate_refuse_unless(ok boolean) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'the wallet refused a guarded posting' USING ERRCODE = 'TG402';
    END IF;
    RETURN true;
END $$;
"""


class Migration(migrations.Migration):
    dependencies = [("payments", "0008_pricing_models_plans")]

    operations = [migrations.RunSQL(FORWARD, "DROP FUNCTION IF EXISTS tollgate_refuse_unless(boolean)")]
