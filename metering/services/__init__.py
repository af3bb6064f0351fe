"""Writes for metering, by sub-domain:

- `events`: a usage event, its validation and pricing (everything before the wallet lock)
- `usage`: one event, debited on the hot path in one statement
- `batch`: many events under one wallet lock
- `holds`: reserve, capture, release, expire
- `catalog`: services and price rows of every model (staff)
- `plans`: plans, what they include, their prices (staff)
- `subscriptions`: choosing a plan, renewals, fees and their collection
- `positions`: an organization's usage of a service this month, which positional prices price at
- `true_up`: the volume true-up of a closed month
- `usage_sql`: the SQL that writes usage records, rollups and key spend, from one column list
"""

from metering.services.batch import BatchResult, usage_record_batch
from metering.services.catalog import price_create, service_create
from metering.services.events import (
    RESERVED_KEY_PREFIX,
    SpendCapExceeded,
    UsageEvent,
    validate_idempotency_key,
    validate_metadata,
)
from metering.services.holds import (
    HoldNotActive,
    HoldOutcome,
    hold_capture,
    hold_capture_key,
    hold_create,
    hold_release,
    holds_expire,
)
from metering.services.usage import UsageOutcome, usage_record
from metering.services.usage_sql import BatchRecord

__all__ = [
    "RESERVED_KEY_PREFIX",
    "BatchRecord",
    "BatchResult",
    "HoldNotActive",
    "HoldOutcome",
    "SpendCapExceeded",
    "UsageEvent",
    "UsageOutcome",
    "hold_capture",
    "hold_capture_key",
    "hold_create",
    "hold_release",
    "holds_expire",
    "price_create",
    "service_create",
    "usage_record",
    "usage_record_batch",
    "validate_idempotency_key",
    "validate_metadata",
]
