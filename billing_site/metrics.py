"""Billing metrics for Prometheus, beside django-prometheus' request, latency, DB and cache metrics.

Labels are bounded: service slugs (a staff-managed list), outcomes, providers, statuses,
currencies — never organization ids. Under gunicorn, PROMETHEUS_MULTIPROC_DIR makes every worker
(and a Celery worker on the same machine) report into one set of files that /metrics sums.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Callable
from decimal import Decimal

from django.conf import settings
from django.http import HttpResponse, HttpResponseForbidden
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

USAGE_EVENTS = Counter("tollgate_usage_events_total", "Metered usage events by service and outcome", ["service", "outcome"])
DEBIT_SECONDS = Histogram(
    "tollgate_debit_seconds", "Time to meter and debit one event (pricing + transaction)", buckets=LATENCY_BUCKETS
)
WALLET_LOCK_SECONDS = Histogram(
    "tollgate_wallet_lock_seconds",
    "Time of the ledger statement that waits for, takes and holds the wallet row lock",
    buckets=LATENCY_BUCKETS,
)
# How a positional event (tiered, volume, package, a plan's allowance) settled: its first guess at the
# position held, a later guess held, or the locked path took it (docs/performance.md, "Pricing models").
POSITION_SETTLED = Counter(
    "tollgate_position_settled_total", "Positional usage events by how their position was settled", ["path"]
)
REVENUE = Counter("tollgate_revenue_total", "Usage revenue (live), in currency units", ["currency"])
RECHARGES = Counter("tollgate_recharges_total", "Recharged amounts credited, in currency units", ["currency"])
PAYMENTS = Counter("tollgate_payments_total", "Payments reaching a status", ["provider", "status"])
SETTLEMENTS = Counter("tollgate_settlement_tasks_total", "Settlement task runs by outcome", ["outcome"])
SETTLEMENT_LAG = Histogram(
    "tollgate_settlement_lag_seconds",
    "From a provider notification's arrival to its settlement",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
)
LOW_BALANCE_ALERTS = Counter("tollgate_low_balance_alerts_total", "Low-balance alerts sent")
BUDGET_ALERTS = Counter("tollgate_budget_alerts_total", "Budget threshold alerts sent")
STATEMENTS_ISSUED = Counter("tollgate_statements_issued_total", "Monthly statements issued")
# A statement's opening balance (the ledger's sum before its month) that differs from the previous
# statement's closing: an entry dated in an issued month committed after it was issued.
STATEMENT_CHAIN_BREAKS = Counter(
    "tollgate_statement_chain_breaks_total", "Statements whose opening differs from the previous statement's closing"
)
RECONCILIATION_MISMATCHES = Gauge(
    "tollgate_reconciliation_mismatches",
    "Wallets or identities that failed the last reconciliation",
    multiprocess_mode="mostrecent",
)


def amount_observed(counter: Counter, *, currency: str, amount: Decimal) -> None:
    """Add a money amount to a counter. Prometheus samples are floats: this is the one place an
    amount becomes one, for dashboards only — nothing reads money back from metrics."""
    counter.labels(currency).inc(float(amount))


# Gauges read from the database at scrape time, each registered by the app that owns the rows
# (`state_gauge_register` in its AppConfig.ready), so this floor never reads the apps' tables itself.
_STATE_GAUGES: dict[str, tuple[str, Callable[[], int]]] = {}


def state_gauge_register(name: str, documentation: str, read: Callable[[], int]) -> None:
    _STATE_GAUGES[name] = (documentation, read)


class BillingStateCollector(Collector):
    """The registered state gauges, read when /metrics is scraped (each one cheap indexed count)."""

    def collect(self):
        for name, (documentation, read) in _STATE_GAUGES.items():
            yield GaugeMetricFamily(name, documentation, value=read())


def _allowed(request) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(presented.encode(), token.encode())
    if settings.METRICS_ALLOWED_NETWORKS:
        try:
            address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(network) for network in settings.METRICS_ALLOWED_NETWORKS)
    # Billing figures are not for the whole internet: production without a restriction stays closed.
    return settings.DEVELOPMENT


def metrics_view(request):
    """/metrics: everything the default registry (or, under gunicorn, every process) has, plus the
    billing state gauges. Restricted by METRICS_TOKEN or METRICS_ALLOWED_NETWORKS; with neither,
    open in development only."""
    if not _allowed(request):
        return HttpResponseForbidden("metrics are restricted")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        output = generate_latest(registry)
    else:
        output = generate_latest(REGISTRY)
    state = CollectorRegistry()
    state.register(BillingStateCollector())
    return HttpResponse(output + generate_latest(state), content_type=CONTENT_TYPE_LATEST)
