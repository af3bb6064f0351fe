"""The usage CSV: one list of columns and one row builder, for the API, the dashboard and the back
office. Amounts are the exact stored figures (12 decimals), as strings."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from billing_site.money import money_str
from metering.models import UsageRecord

USAGE_CSV_COLUMNS = [
    "id",
    "created_at",
    "service",
    "quantity",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "input_price",
    "output_price",
    "cached_input_price",
    "unit_price",
    "cost",
    "balance_after",
    "mode",
    "api_key",
    "idempotency_key",
]
EXPORT_CHUNK = 2000  # rows fetched per keyset query (billing_site/keyset.py: keyset_iterate)
EXPORT_FIRST_CHUNK = 200  # a small first query, so the first row goes out at once


def usage_csv_header(*, with_organization: bool = False) -> list[str]:
    return ["organization", *USAGE_CSV_COLUMNS] if with_organization else list(USAGE_CSV_COLUMNS)


def usage_csv_rows(
    records: Iterable[UsageRecord],
    *,
    api_key_label: Callable[[int | None], str] = lambda key_id: "" if key_id is None else str(key_id),
    with_organization: bool = False,
) -> Iterator[list[Any]]:
    """One CSV row per record, in `usage_csv_header` order. `api_key_label` names a key (its id by
    default; the dashboard shows the readable prefix). Records need their service (and organization)."""
    for r in records:
        row = [
            r.pk,
            r.created_at.isoformat(),
            r.service.slug,
            r.quantity,
            r.input_tokens,
            r.output_tokens,
            r.cached_input_tokens,
            money_str(r.input_price),
            money_str(r.output_price),
            money_str(r.cached_input_price),
            money_str(r.unit_price),
            money_str(r.cost),
            money_str(r.balance_after),
            "test" if r.test else "live",
            api_key_label(r.api_key_id),
            r.idempotency_key,
        ]
        yield [r.organization.slug, *row] if with_organization else row
