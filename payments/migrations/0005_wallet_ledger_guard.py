from django.db import migrations, models

# A wallet's `balance` and `held` change only through the ledger's statements, each of which also
# bumps `ledger_seq` by exactly one. A whole-row write of a stale copy (an admin form loaded before a
# debit committed) carries an old `ledger_seq`, so it is refused instead of undoing the debit. The
# WHEN clause is evaluated in C before any function call, so the ledger's own updates run no PL/pgSQL.
WALLET_GUARD = """
CREATE OR REPLACE FUNCTION tollgate_refuse_wallet_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'wallet %: balance and held change only through the ledger (%)', NEW.organization_id, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER payments_wallet_ledger_only BEFORE UPDATE ON payments_wallet FOR EACH ROW
WHEN ((NEW.balance IS DISTINCT FROM OLD.balance OR NEW.held IS DISTINCT FROM OLD.held)
      AND NEW.ledger_seq IS DISTINCT FROM OLD.ledger_seq + 1)
EXECUTE FUNCTION tollgate_refuse_wallet_write();

CREATE TRIGGER payments_wallet_opens_empty BEFORE INSERT ON payments_wallet FOR EACH ROW
WHEN (NEW.balance <> 0 OR NEW.held <> 0)
EXECUTE FUNCTION tollgate_refuse_wallet_write();
"""

WALLET_GUARD_REVERSE = """
DROP TRIGGER IF EXISTS payments_wallet_ledger_only ON payments_wallet;
DROP TRIGGER IF EXISTS payments_wallet_opens_empty ON payments_wallet;
DROP FUNCTION IF EXISTS tollgate_refuse_wallet_write();
"""


class Migration(migrations.Migration):
    dependencies = [("payments", "0004_alert_signing_secret")]

    operations = [
        migrations.AddField(
            model_name="wallet",
            name="ledger_seq",
            field=models.BigIntegerField(
                default=0,
                editable=False,
                help_text="Bumped by exactly one by every ledger statement that changes balance or held.",
            ),
        ),
        migrations.RunSQL(WALLET_GUARD, WALLET_GUARD_REVERSE),
    ]
