"""The gateway's Prometheus metrics (names the dashboards are built on: keep them). Labels are
low-cardinality:
never a key, account or user id."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

REQUESTS = Counter(
    "faregate_gateway_requests_total", "Client requests by outcome", ["model", "channel", "status", "dialect"]
)
DURATION = Histogram(
    "faregate_gateway_request_duration_seconds",
    "Client request duration, end to end",
    ["dialect"],
    buckets=_LATENCY_BUCKETS,
)
TTFT = Histogram(
    "faregate_gateway_ttft_seconds",
    "Time to the first token sent to the client",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "faregate_gateway_overhead_seconds",
    "Time the gateway itself adds before the upstream call (auth, limits, reservation, routing)",
    buckets=_OVERHEAD_BUCKETS,
)
TOKENS = Counter("faregate_gateway_tokens_total", "Tokens served", ["model", "type"])
COST = Counter("faregate_gateway_cost_micros_total", "Cost charged to clients, micro-USD", ["model"])
UPSTREAM_ERRORS = Counter("faregate_gateway_upstream_errors_total", "Failed upstream attempts", ["channel", "reason"])
RATELIMIT_REJECTIONS = Counter("faregate_gateway_ratelimit_rejections_total", "Requests refused by a limit", ["scope"])
OVERLAPPED = Counter("faregate_gateway_overlapped_admissions_total",
                     "Requests whose admission ran beside the upstream call (no limit near)")
LEASED = Counter("faregate_gateway_leased_admissions_total",
                 "Requests admitted on their key's lease, with no Redis round trip of their own")
INFLIGHT = Gauge("faregate_gateway_inflight_requests", "Client requests in progress", multiprocess_mode="livesum")


_children: dict[tuple[object, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, remembered: prometheus-client takes a lock and rebuilds the label tuple on every
    call, a few µs per metric per request. Bounded, since labels are catalog names, statuses and dialects."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        if len(_children) > 10_000:
            _children.clear()
        found = _children[key] = metric.labels(*labels)
    return found
