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
