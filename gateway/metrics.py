"""The gateway's Prometheus metrics (docs/operations.md). Labels are bounded: model routes and upstreams
are staff-managed lists; outcomes and error kinds are fixed sets."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REQUESTS = Counter(
    "tollgate_gateway_requests_total", "Gateway calls by model, endpoint and outcome", ["model", "endpoint", "outcome"]
)
REFUSED = Counter("tollgate_gateway_refused_total", "Gateway calls refused before any upstream call, by code", ["code"])
TOKENS = Counter(
    "tollgate_gateway_tokens_total",
    "Tokens charged by model, outcome and kind (input, cached_input, output)",
    ["model", "outcome", "kind"],
)
COST = Counter(
    "tollgate_gateway_cost_total", "Cost charged (live keys), in currency units, by model and outcome", ["model", "outcome"]
)
ESTIMATED = Counter(
    "tollgate_gateway_estimated_usage_total", "Calls charged from a local token count, by model and outcome", ["model", "outcome"]
)
UPSTREAM_LATENCY = Histogram(
    "tollgate_gateway_upstream_seconds", "From sending to an upstream to its last byte", ["upstream"], buckets=SECONDS_BUCKETS
)
UPSTREAM_FIRST_BYTE = Histogram(
    "tollgate_gateway_upstream_first_byte_seconds",
    "From sending to an upstream to its first byte (a plain call's whole answer)",
    ["upstream"],
    buckets=SECONDS_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "tollgate_gateway_upstream_errors_total",
    "Upstream failures by kind (connect, timeout, status, empty, breaker_open, concurrency, mid_stream)",
    ["upstream", "kind"],
)
BREAKER_OPEN = Gauge(
    "tollgate_gateway_breaker_open",
    "1 while an upstream's circuit breaker is open or half-open, as last seen by this process",
    ["upstream"],
    multiprocess_mode="mostrecent",
)
STREAMS_OPEN = Gauge("tollgate_gateway_streams_open", "Streams being relayed now", multiprocess_mode="livesum")
