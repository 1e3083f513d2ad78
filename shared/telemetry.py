"""OpenTelemetry wiring: off by default, OTLP/HTTP or console when configured; trace context in NATS headers."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

_configured = False


def setup(
    service: str, exporter: str = "none", endpoint: str = "", extra: SpanExporter | None = None
) -> None:
    """Install a tracer provider. `exporter` is none | otlp | console; `extra` lets tests add an in-memory one."""
    global _configured
    if _configured or (exporter == "none" and extra is None):
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"faregate-{service}"}))
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
    elif exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    if extra is not None:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider.add_span_processor(SimpleSpanProcessor(extra))
    trace.set_tracer_provider(provider)
    _configured = True


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: dict[str, str]) -> None:
    """Add `traceparent` (when a span is active) so the consumer's span links to the producer's."""
    propagate.inject(headers)


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))
