"""The paid request path: authenticate, admit (limits + reservation), try channels until one answers, forward
the answer, then settle and record usage. No database write happens here.

Order of a request:
  1. body read (bounded) and key checked from the in-process cache        -> 413 / 401 / 403
  2. model resolved and allowed                                           -> 400 / 404 / 403
  3. one Redis script: rate limits, concurrency, worst-case reservation   -> 429 / 402
  4. attempts: channel by channel (then fallback models) until one answers before its first byte reaches
     the client; retryable failures (connect, timeout, 429, 5xx) move on  -> 429 / 502 / 503 / 504 if all fail
  5. the answer is forwarded (a stream chunk by chunk as it arrives)
  6. in the background: settle the reservation with the actual cost, publish usage.recorded
     (event id = request id)
Every authenticated request ends in exactly one usage.recorded, failed or not.
This module holds steps 1-3 and 6; step 4 is attempts.py, step 5 streams.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from opentelemetry import trace

from services.gateway import metrics
from services.gateway.admission import Admitting, Allowance, Limits, Settling, Ticket
from services.gateway.auth import check_ip, check_key
from services.gateway.context import Gateway
from services.gateway.dialects.openai import TokenUsage
from services.gateway.errors import (
    BadRequest,
    GatewayError,
    InsufficientQuota,
    ModelNotFound,
    NoChannel,
    NotAllowed,
    RateLimited,
)
from services.gateway.usage import Usage, cost_of
from shared import events as ev
from shared.catalog import Model
from shared.crypto import hash_api_key
from shared.pricing import PPM, cost_micros

log = logging.getLogger("faregate.gateway.relay")
tracer = trace.get_tracer("faregate.gateway")


@dataclass
class Call:
    """Everything the usage event of one request needs; filled in as the request goes."""

    request_id: str
    dialect: str
    endpoint: str
    client_ip: str
    started: float = field(default_factory=time.perf_counter)
    account_id: str = ""
    key_id: str = ""
    user_id: str = ""
    org_id: str | None = None
    group: str = "default"
    model: str = ""
    upstream_model: str = ""
    channel_id: str = ""
    upstream_dialect: str = ""
    stream: bool = False
    status: int = 200
    error_code: str = ""
    usage: Usage = field(default_factory=Usage)
    ttft_ms: int = 0
    price: ev.ModelPrice | None = None
    cost_price: ev.ModelPrice | None = None
    group_ratio_ppm: int = PPM
    discount_ppm: int = 0
    ticket: Ticket | None = None
    ended: float = 0.0  # perf_counter when the answer was handed over (0: not yet)
    recorded: bool = False
    span: Any = None  # the request's OpenTelemetry span, ended by `record`
    # Called each time an upstream request of this call is on the wire (handlers.admit_and_open: the admission
    # goes out then, in the upstream's wait).
    upstream_written: Callable[[], None] | None = None

    def fail(self, exc: GatewayError) -> None:
        self.status = exc.status
        self.error_code = exc.code


# --- step 1-3: authenticate and admit ----------------------------------------------------------------------


def api_key_of(headers: Any, query: Any) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return str(token.strip())
    for name in ("x-api-key", "x-goog-api-key"):
        value = headers.get(name)
        if value:
            return str(value).strip()
    key = query.get("key") if query is not None else None
    return str(key) if key else None


async def authenticate(gw: Gateway, call: Call, secret: str | None) -> ev.KeySnapshot:
    if not secret:
        from services.gateway.errors import InvalidKey

        raise InvalidKey("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    entry = await gw.keycache.get(hash_api_key(secret))
    snap = check_key(entry)
    assert entry is not None
    call.account_id, call.key_id, call.user_id, call.org_id = (
        snap.account_id,
        snap.key_id,
        snap.user_id,
        snap.org_id,
    )
    call.group = snap.group
    check_ip(entry, call.client_ip)
    return snap


def resolve_model(gw: Gateway, call: Call, snap: ev.KeySnapshot, name: Any, kind: str) -> Model:
    if not isinstance(name, str) or not name:
        raise BadRequest("you must provide a model parameter", param="model")
    call.model = name
    model = gw.catalog.models.get(name)
    if model is None or model.kind != kind:
        raise ModelNotFound(f"The model `{name}` does not exist or you do not have access to it.", param="model")
    if not gw.catalog.allowed(snap, name):
        raise NotAllowed(f"This API key is not allowed to use the model `{name}`.")
    group = gw.catalog.group_of(snap)
    call.price = model.price
    call.group_ratio_ppm = group.ratio_ppm
    call.discount_ppm = gw.catalog.catalog.discount_ppm
    return model


def worst_case(gw: Gateway, model: Model, call: Call, prompt_estimate: int, max_output: int, n: int = 1) -> int:
    """The most this request may cost, over the model and every fallback it could be served by: the prompt
    estimate plus `max_output` (or the model's own output cap) for each of the `n` choices."""
    worst = 0
    for m in (model, *(gw.catalog.models[f] for f in model.fallbacks if f in gw.catalog.models)):
        out = (min(max_output, m.max_output) if max_output else m.max_output) * n
        worst = max(
            worst,
            cost_micros(
                m.price,
                prompt_tokens=prompt_estimate,
                completion_tokens=out,
                group_ratio_ppm=call.group_ratio_ppm,
                discount_ppm=call.discount_ppm,
            ),
        )
    return worst


def _limits(gw: Gateway, snap: ev.KeySnapshot) -> Limits:
    s = gw.settings
    return Limits(
        key_rpm=snap.rpm_limit,
        key_tpm=snap.tpm_limit,
        key_concurrency=snap.concurrency_limit,
        account_rpm=s.account_rpm_limit,
        account_tpm=s.account_tpm_limit,
        account_concurrency=s.account_concurrency_limit,
    )


def _allowance(snap: ev.KeySnapshot) -> Allowance | None:
    # An org member's monthly allowance (issue 11), held in the same script as wallet and quota; an org key's
    # spend is counted even without one (0), so an allowance set mid-month sees the whole month.
    return Allowance(snap.org_id, snap.user_id, snap.allowance_micros, snap.allowance_tz) if snap.org_id else None


def may_lease(gw: Gateway, snap: ev.KeySnapshot) -> bool:
    """The key's requests may be admitted on a lease (leases.py): nothing but the wallet and the key's concurrency
    limit applies to them, which a lease can hold; rate windows, a spending cap and an allowance need Redis."""
    s = gw.settings
    return (s.lease_admission and snap.org_id is None and not snap.quota_micros
            and not (snap.rpm_limit or snap.tpm_limit)
            and not (s.account_rpm_limit or s.account_tpm_limit or s.account_concurrency_limit))


def may_overlap(gw: Gateway, snap: ev.KeySnapshot, amount: int) -> bool:
    """Admission may run beside the upstream call (settings.overlap_admission and Admission.overlap_safe)."""
    return gw.settings.overlap_admission and gw.admission.overlap_safe(
        snap.account_id, snap.key_id, amount, snap.quota_micros, _limits(gw, snap), _allowance(snap))


def send_admit(gw: Gateway, call: Call, snap: ev.KeySnapshot, amount: int, token_estimate: int,
               settles_first: bool = True) -> Admitting:
    """Queue the request's admission on the Redis connection now; `admitted` waits for its outcome.

    `settles_first`: answered requests' settles go ahead of it, in the same write, so a client's next request
    finds its concurrency slot and reservation given back. An overlapped admission (nothing near a limit) leaves
    them to the record timer (within settings.record_delay_s, several to a write) or the next admission that is not
    overlapped: Redis answers a write's commands together, so settles sent with it would hold up its reply by
    their run time, which the client waits for."""
    if settles_first:
        flush_records(gw)
    return gw.admission.send_admit(
        request_id=call.request_id,
        account_id=snap.account_id,
        key_id=snap.key_id,
        amount=amount,
        quota_limit=snap.quota_micros,
        token_estimate=token_estimate,
        limits=_limits(gw, snap),
        allowance=_allowance(snap),
    )


async def admit(gw: Gateway, call: Call, snap: ev.KeySnapshot, amount: int, token_estimate: int) -> Ticket:
    return await admitted(gw, call, snap, send_admit(gw, call, snap, amount, token_estimate))


async def admitted(gw: Gateway, call: Call, snap: ev.KeySnapshot, sent: Admitting) -> Ticket:
    """The ticket of an admission `send_admit` queued; raises the client's error when it was refused. A wallet
    Redis does not hold yet is loaded from billing and the admission made once more."""
    for attempt in range(2):
        verdict = await gw.admission.verdict(sent)
        if verdict.ticket is not None:
            return verdict.ticket
        if verdict.refused == "unknown" and attempt == 0 and await gw.load_wallet(snap.account_id):
            sent = send_admit(gw, call, snap, sent.amount, sent.token_estimate)
            continue
        if verdict.refused in ("wallet", "unknown"):
            raise InsufficientQuota(
                "You exceeded your current quota: the balance does not cover this request. "
                "Top up your wallet to continue."
            )
        if verdict.refused == "quota":
            raise InsufficientQuota("This API key has used up its spending limit.")
        if verdict.refused == "allowance":
            raise InsufficientQuota(
                "You have used up your monthly allowance in this organisation; its administrators can raise it."
            )
        if verdict.refused == "unavailable":
            raise NoChannel("The spend guard is temporarily unavailable; retry shortly.", code="service_unavailable")
        scope, _, kind = verdict.refused.partition("_")
        metrics.RATELIMIT_REJECTIONS.labels(verdict.refused).inc()
        what = {
            "rpm": "requests per minute",
            "tpm": "tokens per minute",
            "concurrency": "concurrent requests",
        }
        refused = RateLimited(
            f"Rate limit reached for {what.get(kind, kind)} on this {scope}. Retry after a moment.",
            retry_after=max(verdict.retry_after_ms, 1000) / 1000,
        )
        reset = f"{max(verdict.retry_after_ms, 0) / 1000:.3f}s"
        if verdict.refused == "key_rpm":
            refused.headers = {
                "x-ratelimit-limit-requests": str(snap.rpm_limit),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": reset,
            }
        elif verdict.refused == "key_tpm":
            refused.headers = {
                "x-ratelimit-limit-tokens": str(snap.tpm_limit),
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": reset,
            }
        raise refused
    raise AssertionError("unreachable")


def _usage_of(u: TokenUsage) -> Usage:
    return Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, cached_tokens=u.cached_tokens)


def _token_usage(u: Usage) -> TokenUsage:
    return TokenUsage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, cached_tokens=u.cached_tokens
    )


# --- step 6: settle and record
# -------------------------------------------------------------------------------


async def record(gw: Gateway, call: Call) -> None:
    """Settle the reservation and publish the request's one usage.recorded. Idempotent per Call."""
    if call.recorded:
        return
    if call.ticket is not None and call.ticket.leased:
        record_soon(gw, call)  # its cost goes to Redis with the next lease renewal, and its event after that
        return
    cost, latency_ms, settling = _settle(gw, call)
    await gw.admission.settled(settling)
    _account(gw, call, cost, latency_ms)


def record_soon(gw: Gateway, call: Call) -> None:
    """`record`, for an answer handed to the server: batched, and off the next request's way. The settle is sent
    at the latest with the next admission of this worker (ahead of it, on the same Redis connection, so a client
    sending one request after another finds its slot and reservation given back), or after settings.record_delay_s."""
    if call.recorded:
        return
    call.ended = time.perf_counter()
    gw.unrecorded.append(call)
    if gw.record_timer is None:
        # Not cancelled when an admission takes the batch along: a timer that finds nothing to send costs less
        # than one armed and cancelled per request. Whatever waits is sent within record_delay_s either way.
        gw.record_timer = asyncio.get_running_loop().call_later(gw.settings.record_delay_s, _record_timer, gw)


def _record_timer(gw: Gateway) -> None:
    gw.record_timer = None
    flush_records(gw)


def flush_records(gw: Gateway) -> None:
    """Send the settles of every answered request now; each is accounted (metrics, usage event) once Redis
    answers its settle."""
    if not gw.unrecorded:
        return
    calls, gw.unrecorded = gw.unrecorded, []
    waiting: list[tuple[Call, int, int, Settling]] = []
    leased: list[tuple[Call, int, int]] = []
    for call in calls:
        if call.recorded:
            continue
        cost, latency_ms, settling = _settle(gw, call)
        if call.ticket is not None and call.ticket.leased:
            leased.append((call, cost, latency_ms))
        elif settling is None:
            _account(gw, call, cost, latency_ms)
        else:
            waiting.append((call, cost, latency_ms, settling))
    # After the settles: the leases' renewals carry the leased requests' costs to `pending`, and their usage
    # events go once that is done, as a settle's do.
    renewed = gw.admission.leases.renew()
    if renewed is not None:
        gw.when_done(renewed, lambda: _accounted_leased(gw, leased))
    else:
        _accounted_leased(gw, leased)
    if not waiting:
        return
    last = waiting[-1][3].sent
    if last is not None and all(w[3].sent is not None for w in waiting):
        # Sent together on one connection, answered in order: when the last reply is in, all are.
        gw.when_done(last, lambda: _accounted(gw, waiting))
    else:
        gw.spawn(_account_batch(gw, waiting))


def _accounted_leased(gw: Gateway, batch: list[tuple[Call, int, int]]) -> None:
    for item in batch:
        _account(gw, *item)


def _accounted(gw: Gateway, batch: list[tuple[Call, int, int, Settling]]) -> None:
    failed = []
    for item in batch:
        sent = item[3].sent
        assert sent is not None
        if sent.cancelled() or sent.exception() is not None:
            failed.append(item)  # NOSCRIPT after a Redis restart, or Redis gone: `settled` deals with it
        else:
            _account(gw, *item[:3])
    if failed:
        gw.spawn(_account_batch(gw, failed))


async def drain(gw: Gateway, wait_s: float = 10.0) -> None:
    """On shutdown: settle and record every answered request, including those whose stream ends meanwhile."""
    deadline = time.monotonic() + wait_s
    while True:
        flush_records(gw)
        left = deadline - time.monotonic()
        if left <= 0 or not gw.busy:
            return
        await gw.drain(left)


async def _account_batch(gw: Gateway, batch: list[tuple[Call, int, int, Settling]]) -> None:
    for call, cost, latency_ms, settling in batch:
        await gw.admission.settled(settling)  # sent together: one wait for the whole batch
        _account(gw, call, cost, latency_ms)


def _settle(gw: Gateway, call: Call) -> tuple[int, int, Settling | None]:
    """Mark the call recorded and send its settle: (cost, latency in ms, the settle in flight)."""
    call.recorded = True
    metrics.INFLIGHT.dec()
    cost = 0
    if call.price is not None and call.usage.total:
        cost = cost_of(call.usage, call.price, call.group_ratio_ppm, call.discount_ppm)
    latency_ms = int(((call.ended or time.perf_counter()) - call.started) * 1000)
    settling = gw.admission.send_finish(call.ticket, cost, call.usage.total) if call.ticket is not None else None
    return cost, latency_ms, settling


def _account(gw: Gateway, call: Call, cost: int, latency_ms: int) -> None:
    """Once settled: metrics, the span, and the usage event."""
    # A model the client named but the catalog lacks is "unknown": clients must not mint metric series.
    model = call.model if call.model in gw.catalog.models else "unknown"
    metrics.child(metrics.REQUESTS, model, call.channel_id, str(call.status), call.dialect).inc()
    metrics.child(metrics.DURATION, call.dialect).observe(latency_ms / 1000)
    if call.usage.total:
        metrics.child(metrics.TOKENS, model, "input").inc(call.usage.prompt_tokens)
        metrics.child(metrics.TOKENS, model, "output").inc(call.usage.completion_tokens)
        if call.usage.cached_tokens:
            metrics.child(metrics.TOKENS, model, "cached").inc(call.usage.cached_tokens)
        metrics.child(metrics.COST, model).inc(cost)
    span = call.span
    if span is None:
        _publish_usage(gw, call, latency_ms)
        return
    if span.is_recording():
        operation = OPERATION_OF.get(call.endpoint, "chat")
        span.update_name(f"{operation} {call.model}")
        span.set_attributes(
            {
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": call.model,
                "gen_ai.response.model": call.upstream_model or call.model,
                "gen_ai.provider.name": call.upstream_dialect or "none",
                "gen_ai.usage.input_tokens": call.usage.prompt_tokens,
                "gen_ai.usage.output_tokens": call.usage.completion_tokens,
                "http.response.status_code": call.status,
                "faregate.request_id": call.request_id,
                "faregate.channel_id": call.channel_id,
                "faregate.dialect": call.dialect,
                "faregate.cost_micros": cost,
            }
        )
        if call.error_code:
            span.set_status(trace.StatusCode.ERROR, call.error_code)
    try:
        with trace.use_span(span, end_on_exit=False):  # so the event's traceparent points at this request
            _publish_usage(gw, call, latency_ms)
    finally:
        span.end()


OPERATION_OF = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "embeddings": "embeddings",
    "images": "generate_content",
}


def _publish_usage(gw: Gateway, call: Call, latency_ms: int) -> None:
    if not call.account_id or gw.res.publisher is None:
        return  # not authenticated: nobody to attribute it to (counted in the metrics)
    gw.res.publisher.publish_nowait(
        ev.UsageRecorded(
            event_id=call.request_id,
            request_id=call.request_id,
            account_id=call.account_id,
            key_id=call.key_id,
            user_id=call.user_id,
            org_id=call.org_id,
            model=call.model,
            upstream_model=call.upstream_model,
            channel_id=call.channel_id,
            dialect=call.dialect,
            upstream_dialect=call.upstream_dialect,
            endpoint=call.endpoint,
            stream=call.stream,
            status=call.status,
            error_code=call.error_code,
            prompt_tokens=call.usage.prompt_tokens,
            completion_tokens=call.usage.completion_tokens,
            cached_tokens=call.usage.cached_tokens,
            latency_ms=latency_ms,
            ttft_ms=call.ttft_ms,
            price=call.price,
            group=call.group,
            group_ratio_ppm=call.group_ratio_ppm,
            discount_ppm=call.discount_ppm,
            cost_price=call.cost_price,
            reservation_id=call.ticket.request_id if call.ticket else "",
            reserved_micros=call.ticket.amount if call.ticket else 0,
            client_ip=call.client_ip,
        )
    )


_json_decode = msgspec.json.Decoder().decode


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = _json_decode(raw)
    except msgspec.DecodeError:
        raise BadRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body
