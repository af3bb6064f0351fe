from django.db import migrations

# Usage records stay immutable: UPDATE is always refused. DELETE is refused too, except on the one
# maintenance path of the retention task, which sets `tollgate.retention_cutoff` for its own
# transaction (SET LOCAL) and may then drop only records older than that cutoff whose daily rollup
# exists. The ledger has no such path: its trigger is unchanged.
USAGE_GUARD = """
CREATE OR REPLACE FUNCTION tollgate_guard_usage() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    cutoff text := current_setting('tollgate.retention_cutoff', true);
BEGIN
    IF TG_OP = 'DELETE' AND cutoff IS NOT NULL AND cutoff <> ''
       AND OLD.created_at < cutoff::timestamptz
       AND EXISTS (SELECT 1 FROM metering_usagerollup r
                    WHERE r.organization_id = OLD.organization_id AND r.service_id = OLD.service_id
                      AND r.day = (OLD.created_at AT TIME ZONE 'UTC')::date AND r.test = OLD.test) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'metering_usagerecord rows are immutable: % refused', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
DROP TRIGGER IF EXISTS metering_usagerecord_immutable ON metering_usagerecord;
CREATE TRIGGER metering_usagerecord_immutable BEFORE UPDATE OR DELETE ON metering_usagerecord
FOR EACH ROW EXECUTE FUNCTION tollgate_guard_usage();
"""

REVERSE = """
DROP TRIGGER IF EXISTS metering_usagerecord_immutable ON metering_usagerecord;
CREATE TRIGGER metering_usagerecord_immutable BEFORE UPDATE OR DELETE ON metering_usagerecord
FOR EACH ROW EXECUTE FUNCTION tollgate_refuse_change();
DROP FUNCTION IF EXISTS tollgate_guard_usage();
"""


class Migration(migrations.Migration):
    dependencies = [("metering", "0004_staff_groups_payments")]

    operations = [migrations.RunSQL(USAGE_GUARD, REVERSE)]
