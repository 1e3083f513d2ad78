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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from opentelemetry import trace

from services.gateway import clients, metrics, tokenizer
from services.gateway.admission import Limits, Ticket
from services.gateway.auth import check_ip, check_key
from services.gateway.catalog_view import ChannelView
from services.gateway.context import Gateway
from services.gateway.dialects import openai as dialect_openai
from services.gateway.dialects.errors import TranslationError, UpstreamStreamError
from services.gateway.dialects.openai import TokenUsage
from services.gateway.errors import (
    BadRequest,
    BadUpstream,
    GatewayError,
    InsufficientQuota,
    ModelNotFound,
    NoChannel,
    NotAllowed,
    RateLimited,
    UpstreamTimeout,
    stream_error_event,
)
from services.gateway.providers import anthropic as p_anthropic
from services.gateway.providers import gemini as p_gemini
from services.gateway.providers import openai as oai
from services.gateway.routing import candidates
from services.gateway.sse import SSEParser
from services.gateway.upstream_http import Response, UpstreamError
from services.gateway.usage import Usage, cost_of
from shared import events as ev
from shared.catalog import Model
from shared.crypto import hash_api_key
from shared.pricing import PPM, cost_micros

log = logging.getLogger("faregate.gateway.relay")
tracer = trace.get_tracer("faregate.gateway")

_ERROR_BODY_LIMIT = 64 * 1024


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
    recorded: bool = False
    span: Any = None  # the request's OpenTelemetry span, ended by `record`

    def fail(self, exc: GatewayError) -> None:
        self.status = exc.status
        self.error_code = exc.code


class AttemptFailed(Exception):
    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        breaker: bool,
        client: GatewayError,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.breaker = breaker  # counts against the channel's health
        self.client = client
        self.retry_after = retry_after


@dataclass
class Opened:
    """An upstream that answered 200 before anything was sent to the client."""

    resp: Response
    channel: ChannelView
    model: Model
    upstream_model: str
    chunks: AsyncIterator[bytes] | None = None
    first: bytes = b""
    body: bytes = b""
    translated: bool = False  # the channel speaks another dialect than the client

    @property
    def provider(self) -> Any:
        return PROVIDERS[self.channel.channel.provider]


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
        raise ModelNotFound(
            f"The model `{name}` does not exist or you do not have access to it.", param="model"
        )
    if not gw.catalog.allowed(snap, name):
        raise NotAllowed(f"This API key is not allowed to use the model `{name}`.")
    group = gw.catalog.group_of(snap)
    call.price = model.price
    call.group_ratio_ppm = group.ratio_ppm
    call.discount_ppm = gw.catalog.catalog.discount_ppm
    return model


def worst_case(
    gw: Gateway, model: Model, call: Call, prompt_estimate: int, max_output: int, n: int = 1
) -> int:
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


async def admit(gw: Gateway, call: Call, snap: ev.KeySnapshot, amount: int, token_estimate: int) -> Ticket:
    s = gw.settings
    limits = Limits(
        key_rpm=snap.rpm_limit,
        key_tpm=snap.tpm_limit,
        key_concurrency=snap.concurrency_limit,
        account_rpm=s.account_rpm_limit,
        account_tpm=s.account_tpm_limit,
        account_concurrency=s.account_concurrency_limit,
    )
    for attempt in range(2):
        verdict = await gw.admission.admit(
            request_id=call.request_id,
            account_id=snap.account_id,
            key_id=snap.key_id,
            amount=amount,
            quota_limit=snap.quota_micros,
            token_estimate=token_estimate,
            limits=limits,
        )
        if verdict.ticket is not None:
            return verdict.ticket
        if verdict.refused == "unknown" and attempt == 0 and await gw.load_wallet(snap.account_id):
            continue
        if verdict.refused in ("wallet", "unknown"):
            raise InsufficientQuota(
                "You exceeded your current quota: the balance does not cover this request. "
                "Top up your wallet to continue."
            )
        if verdict.refused == "quota":
            raise InsufficientQuota("This API key has used up its spending limit.")
        if verdict.refused == "unavailable":
            raise NoChannel(
                "The spend guard is temporarily unavailable; retry shortly.", code="service_unavailable"
            )
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


# --- step 4: attempts
# ----------------------------------------------------------------------------------------


def _classify(status: int, headers: dict[str, str]) -> AttemptFailed:
    retry_after = None
    if "retry-after" in headers:
        try:
            retry_after = float(headers["retry-after"])
        except ValueError:
            retry_after = None
    if status == 429:
        return AttemptFailed(
            "upstream_429",
            retryable=True,
            breaker=False,
            retry_after=retry_after,
            client=RateLimited("The upstream is rate limiting; retry later.", retry_after=retry_after or 1),
        )
    if status >= 500 or status in (401, 403, 404):
        # 401/403/404 from an upstream are the channel's misconfiguration (its key, its model map), not the
        # client's fault: another channel may serve the request.
        return AttemptFailed(
            f"upstream_{status}",
            retryable=True,
            breaker=True,
            client=NoChannel("No channel is available to serve this request right now."),
        )
    return AttemptFailed(
        f"upstream_{status}",
        retryable=False,
        breaker=False,
        client=BadRequest(
            "The upstream provider rejected the request as invalid.", code="upstream_rejected_request"
        ),
    )


@dataclass(frozen=True)
class Plan:
    """What to send upstream: the client's own body (for the OpenAI passthrough) and the internal form (for a
    channel of another dialect), the OpenAI path, and whether it streams."""

    client_dialect: str
    body: dict[str, Any]
    internal: dict[str, Any]
    endpoint_path: str  # OpenAI path after /v1: /chat/completions, /embeddings, /images/generations
    stream: bool
    sse: bool = True  # a Gemini client streaming without ?alt=sse gets a JSON array instead


PROVIDERS: dict[str, Any] = {"openai": oai, "anthropic": p_anthropic, "gemini": p_gemini}


def _build(
    plan: Plan,
    channel: ChannelView,
    upstream_model: str,
    api_key: str,
    request_id: str,
) -> tuple[str, dict[str, str], bytes, bool]:
    """(url, headers, body, translated) for one channel."""
    provider = channel.channel.provider
    if provider == "openai" and plan.client_dialect == "openai":
        content = (
            oai.chat_body(plan.body, upstream_model, plan.stream)
            if plan.endpoint_path == "/chat/completions"
            else oai.plain_body(plan.body, upstream_model)
        )
        return (
            oai.url(channel.channel.base_url, plan.endpoint_path),
            oai.headers(api_key, request_id),
            content,
            False,
        )
    module = PROVIDERS.get(provider)
    if module is None or plan.endpoint_path != "/chat/completions":
        raise AttemptFailed(
            f"unsupported_provider:{provider}",
            retryable=True,
            breaker=False,
            client=NoChannel("No channel is available to serve this request right now."),
        )
    try:
        url, headers, content = module.build(
            channel.channel.base_url, api_key, upstream_model, plan.internal, plan.stream, request_id
        )
    except TranslationError as exc:
        raise AttemptFailed(
            "untranslatable", retryable=False, breaker=False, client=BadRequest(exc.message, param=exc.field)
        ) from None
    return url, headers, content, True


async def _attempt(gw: Gateway, call: Call, model: Model, channel: ChannelView, plan: Plan) -> Opened:
    s = gw.settings
    stream = plan.stream
    upstream_model = channel.channel.model_map.get(model.name, model.name)
    if not channel.api_keys:
        raise AttemptFailed(
            "no_upstream_key",
            retryable=True,
            breaker=False,
            client=NoChannel("No channel is available to serve this request right now."),
        )
    api_key = channel.api_keys[hash(call.request_id) % len(channel.api_keys)]
    url, headers, content, translated = _build(plan, channel, upstream_model, api_key, call.request_id)
    # The retry budget bounds when a next attempt may start; a started attempt gets its full first-byte time.
    first_byte = s.first_byte_timeout_s
    resp: Response | None = None
    try:
        async with asyncio.timeout(first_byte):
            resp = await gw.http.post(url, headers, content)
            if resp.status_code != 200:
                await _read_capped(resp)
                raise _classify(resp.status_code, resp.headers)
            opened = Opened(resp, channel, model, upstream_model, translated=translated)
            if stream:
                opened.chunks = resp.aiter_raw()
                opened.first = await anext(opened.chunks)
            else:
                opened.body = await resp.aread()
            return opened
    except AttemptFailed:
        await _close(resp)
        raise
    except TimeoutError:
        await _close(resp)
        raise AttemptFailed(
            "timeout",
            retryable=True,
            breaker=True,
            client=UpstreamTimeout("The upstream did not answer in time."),
        ) from None
    except StopAsyncIteration:
        await _close(resp)
        raise AttemptFailed(
            "empty_stream",
            retryable=True,
            breaker=True,
            client=BadUpstream("The upstream sent an empty response."),
        ) from None
    except UpstreamError as exc:
        await _close(resp)
        raise AttemptFailed(
            f"connect_error:{type(exc).__name__}",
            retryable=True,
            breaker=True,
            client=NoChannel("No channel is available to serve this request right now."),
        ) from None
    except BaseException:
        await _close(resp)
        raise


async def _read_capped(resp: Response) -> None:
    """Drain (a bounded part of) an error answer so the connection can be reused; its content is not used."""
    total = 0
    async for chunk in resp.aiter_raw():
        total += len(chunk)
        if total > _ERROR_BODY_LIMIT:
            break


async def _close(resp: Response | None) -> None:
    if resp is not None:
        try:
            await resp.aclose()
        except Exception:  # noqa: S110 - closing a broken connection may fail; nothing to do about it
            pass


async def open_upstream(gw: Gateway, call: Call, model: Model, plan: Plan) -> Opened:
    s = gw.settings
    deadline = time.monotonic() + s.retry_budget_s
    tried: set[str] = set()
    failures: list[AttemptFailed] = []
    for served, channel in candidates(gw.catalog, model, call.group):
        if len(tried) >= s.max_attempts or (tried and time.monotonic() >= deadline):
            break
        if channel.id in tried:
            continue
        if gw.cooling.get(channel.id, 0) > time.monotonic():
            continue
        usable = gw.breaker.usable_now(channel.id)
        if usable == "no" or (usable == "probe" and not await gw.breaker.claim_probe(channel.id)):
            continue
        tried.add(channel.id)
        try:
            if call.span is None:
                opened = await _attempt(gw, call, served, channel, plan)
            else:
                with tracer.start_as_current_span("upstream attempt") as span:
                    span.set_attribute("faregate.channel_id", channel.id)
                    opened = await _attempt(gw, call, served, channel, plan)
        except AttemptFailed as failure:
            metrics.UPSTREAM_ERRORS.labels(channel.id, failure.reason.split(":")[0]).inc()
            log.warning("upstream attempt failed: %s", failure.reason, extra={"channel_id": channel.id})
            if failure.breaker:
                gw.breaker.failure(channel.id, failure.reason)
            if failure.retry_after is not None or failure.reason == "upstream_429":
                gw.cooling[channel.id] = time.monotonic() + (failure.retry_after or 1.0)
            failures.append(failure)
            if not failure.retryable:
                call.channel_id = channel.id
                raise failure.client from None
            continue
        gw.breaker.success(channel.id)
        gw.cooling.pop(channel.id, None)
        call.model, call.channel_id, call.upstream_model = served.name, channel.id, opened.upstream_model
        call.upstream_dialect = channel.channel.provider
        call.price = served.price
        call.cost_price = channel.cost_price.get(served.name)
        return opened
    if not failures:
        raise NoChannel("No channel is available to serve this request right now.")
    if all(f.reason == "upstream_429" for f in failures):
        waits = [f.retry_after for f in failures if f.retry_after]
        raise RateLimited(
            "The upstream is rate limiting; retry later.", retry_after=min(waits) if waits else 1
        )
    last = failures[-1]
    raise last.client


class ClientGone(Exception):
    """The client hung up before the answer started; the upstream call was cancelled."""


async def _disconnected(receive: Any) -> None:
    # With the body read, the next ASGI message is http.disconnect, and it arrives only when the client
    # leaves.
    while (await receive())["type"] != "http.disconnect":
        pass


async def open_upstream_for(receive: Any, gw: Gateway, call: Call, model: Model, plan: Plan) -> Opened:
    """`open_upstream`, abandoned at once (and the upstream request cancelled) if the client disconnects.

    The attempts run in the request's own task; a watcher cancels that task when the client leaves, which
    cancels whatever upstream read is pending (one extra task per request rather than two and a wait)."""
    me = asyncio.current_task()
    assert me is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(receive)
        gone = True
        me.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await open_upstream(gw, call, model, plan)
    except asyncio.CancelledError:
        if gone:
            me.uncancel()
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()


# --- step 5: forwarding ------------------------------------------------------------------------------------


class SSEUsageFilter:
    """Splits an OpenAI SSE byte stream into events, reads the usage chunk, and drops it when the client did
    not ask for usage. Complete events are forwarded as they arrive; a partial one waits for its end."""

    def __init__(self, client_wants_usage: bool) -> None:
        self.client_wants_usage = client_wants_usage
        self.usage: Usage | None = None
        self.payloads: list[bytes] = []  # data payloads, decoded only if the upstream reports no usage
        self._buf = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete events of what has arrived, minus a usage-only chunk the client did not ask for.
        Raises UpstreamStreamError on an error event or malformed JSON (its text must not reach clients)."""
        self._buf += chunk
        end = self._buf.rfind(b"\n\n")
        if end < 0:
            return b""
        ready, self._buf = self._buf[: end + 2], self._buf[end + 2 :]
        self.payloads.append(ready)
        dropped = False
        out = []
        for event in ready.split(b"\n\n"):
            if not event.startswith(b"data:"):
                out.append(event)
                continue
            data = event[5:].lstrip()
            if data == b"[DONE]":
                out.append(event)
                continue
            usage, usage_only = oai.probe_event(data)
            if usage is not None:
                self.usage = usage
                if usage_only and not self.client_wants_usage:
                    dropped = True
                    continue
            out.append(event)
        if not dropped:
            return ready  # the common case: forward the bytes exactly as they came
        return b"\n\n".join(e for e in out if e) + b"\n\n"

    def rest(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest

    def counted_text(self) -> str:
        datas = []
        for blob in self.payloads:
            for event in blob.split(b"\n\n"):
                data = event[6:] if event.startswith(b"data: ") else b""
                if data and data != b"[DONE]":
                    datas.append(data)
        return oai.stream_text(datas)


def stream_body(
    gw: Gateway, call: Call, opened: Opened, client_wants_usage: bool, prompt_messages: Any
) -> AsyncIterator[bytes]:
    idle = gw.settings.idle_timeout_s
    sse = SSEUsageFilter(client_wants_usage)

    async def generate() -> AsyncIterator[bytes]:
        assert opened.chunks is not None
        ended = False
        try:
            out = sse.feed(opened.first)
            call.ttft_ms = int((time.perf_counter() - call.started) * 1000)
            metrics.TTFT.labels(call.model).observe(call.ttft_ms / 1000)
            if out:
                yield out
            while True:
                try:
                    async with asyncio.timeout(idle):
                        chunk = await anext(opened.chunks)
                except StopAsyncIteration:
                    break
                out = sse.feed(chunk)
                if out:
                    yield out
            rest = sse.rest()
            if rest:
                yield rest
            ended = True
        except (TimeoutError, UpstreamError, UpstreamStreamError) as exc:
            failed: GatewayError = (
                UpstreamTimeout("The upstream stopped sending mid-stream.")
                if isinstance(exc, TimeoutError)
                else BadUpstream("The upstream stream broke or reported an error mid-stream.")
            )
            call.fail(failed)
            metrics.UPSTREAM_ERRORS.labels(call.channel_id, "mid_stream").inc()
            gw.breaker.failure(call.channel_id, "mid_stream")
            yield stream_error_event(call.dialect, failed.status, failed.code, failed.message)
            ended = True
        finally:
            if not ended:
                # The client went away (the ASGI server cancelled us): stop the upstream at once, keep the
                # tally.
                call.status, call.error_code = 499, "client_disconnected"
            gw.spawn(_finish_stream(gw, call, opened, sse, prompt_messages))

    return generate()


async def _finish_stream(
    gw: Gateway, call: Call, opened: Opened, sse: SSEUsageFilter, prompt_messages: Any
) -> None:
    await _close(opened.resp)
    if sse.usage is not None:
        call.usage = sse.usage
    else:
        # No usage report (the stream was cut, or the upstream does not send one): count with the tokenizer.
        await tokenizer.ready()
        call.usage = Usage(
            prompt_tokens=tokenizer.count_chat_prompt(prompt_messages),
            completion_tokens=tokenizer.count_text(sse.counted_text()),
        )
    await record(gw, call)


def _usage_of(u: TokenUsage) -> Usage:
    return Usage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, cached_tokens=u.cached_tokens
    )


def _token_usage(u: Usage) -> TokenUsage:
    return TokenUsage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, cached_tokens=u.cached_tokens
    )


def _delta_text(chunk: dict[str, Any], into: list[str]) -> None:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            for name in ("content", "reasoning_content"):
                if isinstance(delta.get(name), str):
                    into.append(delta[name])
            for tc in delta.get("tool_calls") or ():
                fn = tc.get("function") if isinstance(tc, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    into.append(fn["arguments"])


def translated_stream_body(gw: Gateway, call: Call, opened: Opened, plan: Plan) -> AsyncIterator[bytes]:
    """A stream between different dialects: upstream events -> internal chunks -> the client's events."""
    idle = gw.settings.idle_timeout_s
    parser = SSEParser()
    upstream = opened.provider.Stream(opened.upstream_model)
    out = clients.stream_out(call.dialect, plan.body, call.model, sse=plan.sse)
    texts: list[str] = []
    reported: list[TokenUsage] = []

    def convert(events: list[tuple[str, bytes]], extra: list[dict[str, Any]] | None = None) -> bytes:
        frames: list[bytes] = []
        chunks = [c for name, data in events for c in upstream.feed(name, data)] + (extra or [])
        for c in chunks:
            u = dialect_openai.chunk_usage(c)
            if u is not None:
                reported.append(u)
            _delta_text(c, texts)
            frames += out.feed(c)
        return b"".join(frames)

    def final_usage() -> Usage:
        if reported:
            return _usage_of(reported[-1])
        return Usage(
            prompt_tokens=tokenizer.count_chat_prompt(plan.internal.get("messages")),
            completion_tokens=tokenizer.count_text("".join(texts)),
        )

    async def generate() -> AsyncIterator[bytes]:
        assert opened.chunks is not None
        ended = False
        try:
            data = convert(parser.feed(opened.first))
            call.ttft_ms = int((time.perf_counter() - call.started) * 1000)
            metrics.TTFT.labels(call.model).observe(call.ttft_ms / 1000)
            if data:
                yield data
            while True:
                try:
                    async with asyncio.timeout(idle):
                        chunk = await anext(opened.chunks)
                except StopAsyncIteration:
                    break
                data = convert(parser.feed(chunk))
                if data:
                    yield data
            data = convert(parser.close(), upstream.finish())
            if not reported:
                await tokenizer.ready()
            call.usage = final_usage()
            u = call.usage
            yield data + b"".join(
                out.finish(
                    TokenUsage(
                        prompt_tokens=u.prompt_tokens,
                        completion_tokens=u.completion_tokens,
                        cached_tokens=u.cached_tokens,
                    )
                )
            )
            ended = True
        except (TimeoutError, UpstreamError, UpstreamStreamError, msgspec.DecodeError) as exc:
            failed: GatewayError = (
                UpstreamTimeout("The upstream stopped sending mid-stream.")
                if isinstance(exc, TimeoutError)
                else BadUpstream("The upstream stream broke or reported an error mid-stream.")
            )
            call.fail(failed)
            metrics.UPSTREAM_ERRORS.labels(call.channel_id, "mid_stream").inc()
            gw.breaker.failure(call.channel_id, "mid_stream")
            yield b"".join(out.error(failed.message, failed.status))
            ended = True
        finally:
            if not ended:
                call.status, call.error_code = 499, "client_disconnected"
            # Counting (if needed) happens in the background task: awaiting here may be impossible, the
            # request's task being cancelled when the client left.
            gw.spawn(_close_and_record(gw, call, opened, None if call.usage.total else final_usage))

    return generate()


async def _close_and_record(gw: Gateway, call: Call, opened: Opened, count: Any = None) -> None:
    await _close(opened.resp)
    if count is not None:
        await tokenizer.ready()
        call.usage = count()
    await record(gw, call)


# --- step 6: settle and record
# -------------------------------------------------------------------------------


async def record(gw: Gateway, call: Call) -> None:
    """Settle the reservation and publish the request's one usage.recorded. Idempotent per Call."""
    if call.recorded:
        return
    call.recorded = True
    metrics.INFLIGHT.dec()
    cost = 0
    if call.price is not None and call.usage.total:
        cost = cost_of(call.usage, call.price, call.group_ratio_ppm, call.discount_ppm)
    if call.ticket is not None:
        await gw.admission.finish(call.ticket, cost, call.usage.total)
    latency_ms = int((time.perf_counter() - call.started) * 1000)
    metrics.REQUESTS.labels(call.model, call.channel_id, str(call.status), call.dialect).inc()
    metrics.DURATION.labels(call.dialect).observe(latency_ms / 1000)
    if call.usage.total:
        metrics.TOKENS.labels(call.model, "input").inc(call.usage.prompt_tokens)
        metrics.TOKENS.labels(call.model, "output").inc(call.usage.completion_tokens)
        metrics.TOKENS.labels(call.model, "cached").inc(call.usage.cached_tokens)
        metrics.COST.labels(call.model).inc(cost)
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
