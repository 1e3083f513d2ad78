"""The usage service's durable consumers: subscriptions, tracing and dispatch to `ingest`.

usage-log      USAGE stream, usage.recorded + usage.charged -> request log, aggregates, balances
usage-balance  BILLING stream, wallet.credited              -> balances (so the dashboard sees top-ups)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram

from services.usage import ingest
from shared import bus
from shared.events import AnyEvent, UsageCharged, UsageRecorded
from shared.telemetry import extract_context, tracer

ROWS = Counter("faregate_usage_log_rows_total", "Request-log rows written by the usage service")
BATCH_SECONDS = Histogram(
    "faregate_usage_batch_duration_seconds", "Time to apply one consumer batch (one transaction)",
    ["consumer"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

# Ack settings beside the handler. A batch of up to `batch` messages is one transaction: well under ack_wait
# even on a slow disk. A failed batch is redelivered with growing delays; after max_deliver (about an hour of
# retries) JetStream gives up on a message, which only a long Postgres outage can cause.
LOG_CONSUMER = bus.ConsumerSpec(
    durable="usage-log",
    stream="USAGE",
    filter_subjects=("usage.recorded", "usage.charged"),
    ack_wait_s=60.0,
    max_deliver=150,
    max_ack_pending=20_000,
    batch=500,
    backoff_s=(0.5, 1, 2, 5, 10, 30),
)
BALANCE_CONSUMER = bus.ConsumerSpec(
    durable="usage-balance",
    stream="BILLING",
    filter_subjects=("wallet.credited",),
    ack_wait_s=30.0,
    max_deliver=150,
    max_ack_pending=1_000,
    batch=100,
    backoff_s=(0.5, 1, 2, 5, 10, 30),
)

_tracer = tracer("faregate.usage")


def _operation(endpoint: str) -> str:
    """GenAI semantic-convention operation name for a gateway endpoint."""
    return "chat" if endpoint in ("chat", "messages", "responses") else endpoint


def _span(msg: Msg, event: AnyEvent, consumer: str) -> trace.Span:
    """A consumer span whose parent is the producer's span (traceparent travels in the NATS headers)."""
    etype = event.__struct_config__.tag
    span = _tracer.start_span(f"{consumer} process {etype}", context=extract_context(msg.headers),
                              kind=SpanKind.CONSUMER)
    if not span.is_recording():
        return span  # tracing is off: skip building attributes for every message of a busy stream
    span.set_attributes({
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": msg.subject,
        "messaging.consumer.group.name": consumer,
        "messaging.message.id": event.event_id,
    })
    if isinstance(event, UsageRecorded):
        span.set_attributes({
            "gen_ai.operation.name": _operation(event.endpoint),
            "gen_ai.request.model": event.model,
            "gen_ai.response.model": event.upstream_model or event.model,
            "gen_ai.usage.input_tokens": event.prompt_tokens,
            "gen_ai.usage.output_tokens": event.completion_tokens,
            "faregate.request_id": event.request_id,
            "http.response.status_code": event.status,
        })
    elif isinstance(event, UsageCharged):
        span.set_attributes({"gen_ai.request.model": event.model, "faregate.request_id": event.request_id,
                             "faregate.amount_micros": event.amount_micros})
    return span


def handler(pool: asyncpg.Pool, consumer: str) -> bus.Handler:
    async def handle(batch: Sequence[tuple[Msg, AnyEvent]]) -> None:
        spans = [_span(msg, event, consumer) for msg, event in batch]
        started = time.perf_counter()
        try:
            applied = await ingest.apply_batch(pool, consumer, [event for _, event in batch])
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.end()
            raise
        BATCH_SECONDS.labels(consumer).observe(time.perf_counter() - started)
        ROWS.inc(applied.rows_inserted)
        for span in spans:
            span.end()

    return handle


async def run(js: JetStreamContext, namespace: str, pool: asyncpg.Pool, spec: bus.ConsumerSpec,
              stop: asyncio.Event) -> None:
    await bus.run_consumer(js, namespace, spec, handler(pool, spec.durable), stop)
