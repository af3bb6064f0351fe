"""Usage retention: export old usage records to gzip'd JSON Lines, then drop them.

Chosen design: a maintenance path the database trigger allows only for this task (see migration
0005), rather than monthly partitions. Partitioning the usage table would need every unique
constraint to include the partition key (breaking the (organization, idempotency key) guarantee
across months) and a partitioned table that Django's migrations do not manage. The trigger path
keeps one ordinary table: UPDATE stays impossible for everyone; DELETE is possible only inside a
transaction that set `tollgate.retention_cutoff`, only for records older than it, and only where
the daily rollup that summaries read from exists. The ledger is never touched.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from billing_site.money import money_str
from metering.models import UsageRecord

logger = logging.getLogger(__name__)

EXPORT_FIELDS = [
    "id",
    "organization_id",
    "service_id",
    "api_key_id",
    "user_id",
    "quantity",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "input_price",
    "output_price",
    "cached_input_price",
    "unit_price",
    "cost",
    "test",
    "idempotency_key",
    "metadata",
    "transfer_id",
    "balance_after",
    "hold_id",
    "created_at",
]
MONEY_FIELDS = {"input_price", "output_price", "cached_input_price", "unit_price", "cost", "balance_after"}


@dataclass(frozen=True)
class RetentionResult:
    cutoff: datetime
    archive: Path | None
    exported: int
    deleted: int


def _row(record: UsageRecord) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name in EXPORT_FIELDS:
        value = getattr(record, name)
        row[name] = money_str(value) if name in MONEY_FIELDS else value.isoformat() if isinstance(value, datetime) else value
    return row


def usage_retention_run(
    *, older_than_days: int, archive_dir: Path, now: datetime | None = None, chunk: int = 5000
) -> RetentionResult:
    """Export every usage record created before midnight UTC `older_than_days` days ago, fsync the
    archive, then delete exactly the exported records (in chunks, through the trigger's
    maintenance path). A record is deleted only after it is safely on disk."""
    if older_than_days < 1:
        raise ValueError("retention keeps at least one day")
    now = now or timezone.now()
    cutoff = (now - timedelta(days=older_than_days)).replace(hour=0, minute=0, second=0, microsecond=0)
    old = UsageRecord.objects.filter(created_at__lt=cutoff).order_by("id")
    last_id = old.values_list("id", flat=True).last()
    if last_id is None:
        return RetentionResult(cutoff=cutoff, archive=None, exported=0, deleted=0)
    archive_dir.mkdir(parents=True, exist_ok=True)
    archive = archive_dir / f"usage-before-{cutoff:%Y-%m-%d}-to-id-{last_id}.jsonl.gz"
    partial = archive.with_suffix(".partial")
    exported = 0
    with gzip.open(partial, "wt", encoding="utf-8") as out:
        for record in old.filter(id__lte=last_id).iterator(chunk_size=chunk):
            out.write(json.dumps(_row(record), separators=(",", ":")) + "\n")
            exported += 1
    with open(partial, "rb") as written:
        os.fsync(written.fileno())
    partial.rename(archive)

    deleted = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT set_config('tollgate.retention_cutoff', %s, true)", [cutoff.isoformat()])
            cursor.execute(
                "DELETE FROM metering_usagerecord WHERE id IN "
                "(SELECT id FROM metering_usagerecord WHERE created_at < %s AND id <= %s ORDER BY id LIMIT %s)",
                [cutoff, last_id, chunk],
            )
            batch = cursor.rowcount
        deleted += batch
        if batch < chunk:
            break
    logger.info("usage retention: exported %s and dropped %s records before %s into %s", exported, deleted, cutoff, archive.name)
    return RetentionResult(cutoff=cutoff, archive=archive, exported=exported, deleted=deleted)


def usage_retention_scheduled() -> RetentionResult | None:
    """The beat task's body: runs only when USAGE_RETENTION_DAYS is set."""
    if not settings.USAGE_RETENTION_DAYS:
        return None
    return usage_retention_run(older_than_days=settings.USAGE_RETENTION_DAYS, archive_dir=Path(settings.USAGE_ARCHIVE_DIR))
