"""One request, seen the way an operator sees it: samples on /metrics and a span tree across gateway ->
NATS -> usage consumer with the OpenTelemetry GenAI attribute names (SDK in-memory exporter; real NATS and
Postgres)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from services.usage import consumer
from services.usage.app import create_app as create_usage_app
from services.usage.config import UsageSettings
from shared import telemetry
from shared.runtime import Resources
from tests.gateway.conftest import World, sdk
from tests.usage.conftest import eventually, recorded

MESSAGES: list[Any] = [{"role": "user", "content": "Trace me through the relay."}]


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):  # tracing already set up in this process: add our exporter to it
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        telemetry.setup("tests", extra=exporter)
    yield exporter


@pytest.fixture
async def usage_log(world: World) -> AsyncIterator[Resources]:
    """The usage-log consumer on the same streams the in-process gateway publishes to."""
    res = world.res
    assert res.js and res.pool
    stop = asyncio.Event()
    task = asyncio.create_task(
        consumer.run(res.js, res.common.namespace, res.pool, consumer.LOG_CONSUMER, stop))
    yield res
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


def _consumer_span(exporter: InMemorySpanExporter, request_id: str) -> ReadableSpan | None:
    return next((s for s in exporter.get_finished_spans()
                 if s.name == "usage-log process usage.recorded"
                 and (s.attributes or {}).get("faregate.request_id") == request_id), None)


async def test_the_consumer_span_continues_the_producers_trace(spans: InMemorySpanExporter,
                                                               usage_log: Resources) -> None:
    """The usage side alone: whoever publishes inside a span, the consumer's span is its child."""
    assert usage_log.publisher
    producer = trace.get_tracer("tests.producer")
    event = recorded(prompt=321, completion=45)
    with producer.start_as_current_span("gateway request", kind=SpanKind.SERVER) as parent:
        await usage_log.publisher.publish(event)

    async def seen() -> bool:
        return _consumer_span(spans, event.request_id) is not None

    await eventually(seen)
    span = _consumer_span(spans, event.request_id)
    assert span is not None and span.parent is not None
    assert span.kind == SpanKind.CONSUMER
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.parent.span_id == parent.get_span_context().span_id
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (321, 45)
    assert attrs["messaging.system"] == "nats"
    assert attrs["messaging.destination.name"] == f"{usage_log.common.namespace}.usage.recorded"


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _one_streamed_request(world: World, gateway: AsyncTestClient[Any]) -> tuple[str, int]:
    """A streamed chat completion with a fresh key; (request id, prompt tokens)."""
    secret, _ = await world.add_key()
    raw = await sdk(gateway, secret).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=20, stream=True,
        stream_options={"include_usage": True})
    usage = None
    async for chunk in raw.parse():
        usage = chunk.usage or usage
    assert usage is not None
    return raw.headers["x-request-id"], usage.prompt_tokens


async def test_a_request_through_the_gateway_shows_on_metrics(
        spans: InMemorySpanExporter, world: World, gateway: AsyncTestClient[Any],
        usage_log: Resources) -> None:
    req_labels = {"model": "gpt-4o-mini", "channel": "main", "status": "200", "dialect": "openai"}
    before = {
        "requests": _sample("faregate_gateway_requests_total", req_labels),
        "tokens_in": _sample("faregate_gateway_tokens_total", {"model": "gpt-4o-mini", "type": "input"}),
        "rows": _sample("faregate_usage_log_rows_total", {}),
        "consumed": _sample("faregate_events_consumed_total", {"consumer": "usage-log", "outcome": "ok"}),
    }
    rid, prompt_tokens = await _one_streamed_request(world, gateway)

    async def logged() -> bool:
        assert usage_log.pool
        return bool(await usage_log.pool.fetchval(
            "SELECT count(*) FROM usage.request_log WHERE request_id = $1", rid))

    await eventually(logged)

    # Metrics: the gateway's request and token counters and the usage consumer's, as /metrics serves them.
    assert _sample("faregate_gateway_requests_total", req_labels) == before["requests"] + 1
    assert _sample("faregate_gateway_tokens_total", {"model": "gpt-4o-mini", "type": "input"}) == \
        before["tokens_in"] + prompt_tokens
    assert _sample("faregate_usage_log_rows_total", {}) >= before["rows"] + 1
    assert _sample("faregate_events_consumed_total", {"consumer": "usage-log", "outcome": "ok"}) >= \
        before["consumed"] + 1
    metrics = (await gateway.get("/metrics")).text
    assert ('faregate_gateway_requests_total{channel="main",dialect="openai",model="gpt-4o-mini",'
            'status="200"}') in metrics
    assert 'faregate_gateway_ttft_seconds_bucket{le="+Inf",model="gpt-4o-mini"}' in metrics
    assert "faregate_gateway_overhead_seconds_bucket" in metrics
    async with AsyncTestClient(app=create_usage_app(UsageSettings(retention_interval_s=0), world.common,
                                                    consumers=False)) as usage_http:
        await asyncio.sleep(0)  # let the pool gauge loop take its first reading
        usage_metrics = (await usage_http.get("/metrics")).text
    assert 'faregate_db_pool_connections{service="usage",state="max"}' in usage_metrics
    assert "faregate_usage_batch_duration_seconds_bucket" in usage_metrics


async def test_the_usage_span_joins_the_gateway_requests_trace(
        spans: InMemorySpanExporter, world: World, gateway: AsyncTestClient[Any],
        usage_log: Resources) -> None:
    """gateway request span (SERVER, gen_ai.*) -> its upstream attempt, and -> through usage.recorded's
    traceparent on NATS -> the usage consumer's span (CONSUMER, gen_ai.*): one trace."""
    rid, prompt_tokens = await _one_streamed_request(world, gateway)

    async def seen() -> bool:
        return _consumer_span(spans, rid) is not None

    await eventually(seen)
    # The trace: the usage consumer's span sits in the gateway request's trace, under a gateway span.
    consumed = _consumer_span(spans, rid)
    assert consumed is not None, "the usage consumer traced the event"
    assert dict(consumed.attributes or {})["gen_ai.usage.input_tokens"] == prompt_tokens
    gateway_spans = [s for s in spans.get_finished_spans() if s.instrumentation_scope
                     and s.instrumentation_scope.name.startswith("faregate.gateway")]
    assert gateway_spans, "the gateway traced the request"
    same_trace = [s for s in gateway_spans if s.context.trace_id == consumed.context.trace_id]
    assert consumed.parent is not None and same_trace, (
        "usage.recorded carried no traceparent from the gateway's request span")
    assert consumed.parent.span_id in {s.context.span_id for s in same_trace}
    root = [s for s in same_trace if s.parent is None]
    assert len(root) == 1 and root[0].kind == SpanKind.SERVER
    assert consumed.parent.span_id == root[0].context.span_id
    attrs = dict(root[0].attributes or {})
    assert attrs.get("gen_ai.operation.name") == "chat"
    assert attrs.get("gen_ai.request.model") == "gpt-4o-mini"
    assert attrs.get("gen_ai.usage.input_tokens") == prompt_tokens
    attempts = [s for s in same_trace if s.name == "upstream attempt"]
    assert attempts and all(a.parent is not None and a.parent.span_id == root[0].context.span_id
                            for a in attempts)
