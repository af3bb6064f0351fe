"""SQL for the database-level guards that keep money records immutable (docs/contract.md §2.3)."""

IMMUTABLE_FUNCTION = """
CREATE OR REPLACE FUNCTION tollgate_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are immutable: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
"""


def immutable_table_sql(table: str) -> tuple[str, str]:
    """(forward, reverse) SQL making `table` refuse UPDATE and DELETE, whoever asks."""
    trigger = f"{table}_immutable"
    forward = (
        f"CREATE TRIGGER {trigger} BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION tollgate_refuse_change();"
    )
    return forward, f"DROP TRIGGER IF EXISTS {trigger} ON {table};"


# Numbered documents (docs/statements.md): the counter row of (organization, kind) is upserted by the
# inserting transaction, which holds its lock until it ends, so concurrent inserts take turns and a
# rolled-back insert takes its number back with it: no gaps, no repeats, whatever the caller sends.
DOCUMENT_NUMBER_FUNCTIONS = """
-- TG_ARGV: the kind of document, and the column that with organization_id names one (a receipt's
-- payment, a statement's month). A BEFORE trigger runs before the unique indexes are checked, so a
-- duplicate is refused here, under the counter's lock (every earlier insert of this organization's
-- documents of this kind has ended, and each statement of this function sees what it committed):
-- an INSERT … ON CONFLICT DO NOTHING that would insert nothing fails instead of taking a number.
CREATE OR REPLACE FUNCTION tollgate_document_number() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    taken boolean;
BEGIN
    INSERT INTO payments_documentcounter (organization_id, kind, last) VALUES (NEW.organization_id, TG_ARGV[0], 1)
    ON CONFLICT (organization_id, kind) DO UPDATE SET last = payments_documentcounter.last + 1
    RETURNING last INTO NEW.number;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I d WHERE d.organization_id = ($1).organization_id AND d.%I = ($1).%I)',
                   TG_TABLE_NAME, TG_ARGV[1], TG_ARGV[1])
       INTO taken USING NEW;
    IF taken THEN
        RAISE EXCEPTION 'a % for this % exists already', TG_ARGV[0], TG_ARGV[1] USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END $$;

-- Only the numbering trigger counts: its upsert runs inside a trigger, so this guard sees a trigger
-- depth of 2 for it and of 1 for a statement sent by hand, which may only lock the row (last = last,
-- or a new row at 0: document_counter_lock).
CREATE OR REPLACE FUNCTION tollgate_document_counter_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       OR (TG_OP = 'INSERT' AND NOT (NEW.last = 0 OR (NEW.last = 1 AND pg_trigger_depth() > 1)))
       OR (TG_OP = 'UPDATE' AND (NEW.organization_id <> OLD.organization_id OR NEW.kind <> OLD.kind
           OR NOT (NEW.last = OLD.last OR (NEW.last = OLD.last + 1 AND pg_trigger_depth() > 1)))) THEN
        RAISE EXCEPTION 'document counters only count up by one, as documents are inserted: % refused', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER payments_documentcounter_guard BEFORE INSERT OR UPDATE OR DELETE ON payments_documentcounter
FOR EACH ROW EXECUTE FUNCTION tollgate_document_counter_guard();
"""
DOCUMENT_NUMBER_FUNCTIONS_REVERSE = """
DROP TRIGGER IF EXISTS payments_documentcounter_guard ON payments_documentcounter;
DROP FUNCTION IF EXISTS tollgate_document_counter_guard();
DROP FUNCTION IF EXISTS tollgate_document_number() CASCADE;
"""


def document_number_sql(table: str, kind: str, key: str) -> tuple[str, str]:
    """(forward, reverse) SQL numbering `table`'s rows per organization as documents of `kind`, one
    per organization and `key` column."""
    trigger = f"{table}_number"
    forward = (
        f"CREATE TRIGGER {trigger} BEFORE INSERT ON {table} FOR EACH ROW"
        f" EXECUTE FUNCTION tollgate_document_number('{kind}', '{key}');"
    )
    return forward, f"DROP TRIGGER IF EXISTS {trigger} ON {table};"
