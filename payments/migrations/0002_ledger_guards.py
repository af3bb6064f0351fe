from django.db import migrations

from billing_site.db_guards import IMMUTABLE_FUNCTION, immutable_table_sql

# Every transfer's entries must sum to zero and number at least two. The ledger writes all of a
# transfer's entries in one statement, so a statement-level check over the inserted rows sees
# whole transfers, and costs one aggregate per statement rather than a lookup per row.
BALANCED_TRANSFERS = """
CREATE OR REPLACE FUNCTION tollgate_check_balanced_transfers() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT transfer_id, sum(amount) AS total, count(*) AS n INTO bad
      FROM new_entries GROUP BY transfer_id
    HAVING sum(amount) <> 0 OR count(*) < 2
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'transfer % is unbalanced: % entries summing to %', bad.transfer_id, bad.n, bad.total
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER payments_ledgerentry_balanced AFTER INSERT ON payments_ledgerentry
REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION tollgate_check_balanced_transfers();
"""

entries_forward, entries_reverse = immutable_table_sql("payments_ledgerentry")
transfers_forward, transfers_reverse = immutable_table_sql("payments_transfer")


class Migration(migrations.Migration):
    dependencies = [("payments", "0001_initial")]

    operations = [
        migrations.RunSQL(IMMUTABLE_FUNCTION, reverse_sql="DROP FUNCTION IF EXISTS tollgate_refuse_change() CASCADE;"),
        migrations.RunSQL(entries_forward, entries_reverse),
        migrations.RunSQL(transfers_forward, transfers_reverse),
        migrations.RunSQL(
            BALANCED_TRANSFERS,
            reverse_sql="DROP TRIGGER IF EXISTS payments_ledgerentry_balanced ON payments_ledgerentry;"
            "DROP FUNCTION IF EXISTS tollgate_check_balanced_transfers();",
        ),
    ]
