"""What operators see: a GenAI-convention span per request whose trace the usage event carries on to billing,
and the Prometheus series the dashboards are built on."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import telemetry
from tests.gateway.conftest import World, eventually, sdk

MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


def memory_exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):  # another test already installed the SDK provider
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        telemetry.setup("gateway-test", "none", extra=exporter)
    return exporter


async def test_request_span_has_genai_attributes_and_the_usage_event_carries_its_trace(
    world: World, gateway: AsyncTestClient[Any]
) -> None:
    exporter = memory_exporter()
    assert world.res.js
    sub = await world.res.js.subscribe(f"{world.common.namespace}.usage.recorded", ordered_consumer=True)
    secret, _ = await world.add_key()
    raw = await sdk(gateway, secret).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    rid = raw.headers["x-request-id"]
    _ = [c async for c in raw.parse()]

    def span() -> Any:
        return next(
            (s for s in exporter.get_finished_spans() if (s.attributes or {}).get("faregate.request_id") == rid),
            None,
        )

    async def ended() -> bool:
        return span() is not None

    await eventually(ended)
    s = span()
    attrs = dict(s.attributes)
    assert s.name == "chat gpt-4o-mini"
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert any(
        child.parent is not None and child.parent.span_id == s.context.span_id
        for child in exporter.get_finished_spans()
        if child.name == "upstream attempt"
    )

    while True:
        msg = await sub.next_msg(timeout=10)
        if rid.encode() in msg.data:
            break
    await sub.unsubscribe()
    traceparent = (msg.headers or {}).get("traceparent", "")
    assert f"{s.context.trace_id:032x}" in traceparent


async def test_prometheus_series_have_the_agreed_names(world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, _ = await world.add_key()
    await sdk(gateway, secret).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    async def counted() -> bool:
        text = (await gateway.get("/metrics")).text
        return (
            'faregate_gateway_requests_total{channel="main",dialect="openai",model="gpt-4o-mini",status="200"}' in text
        )

    await eventually(counted)
    text = (await gateway.get("/metrics")).text
    for name in (
        "faregate_gateway_request_duration_seconds_bucket",
        "faregate_gateway_ttft_seconds_bucket",
        "faregate_gateway_overhead_seconds_bucket",
        'faregate_gateway_tokens_total{model="gpt-4o-mini"',
        'faregate_gateway_cost_micros_total{model="gpt-4o-mini"}',
        "faregate_gateway_inflight_requests",
    ):
        assert name in text, name
