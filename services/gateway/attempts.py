"""Step 4 of the request path: the upstream attempts. Channel by channel (then the fallback models) until
one answers before anything reached the client; what counts as retryable, and how each channel's request is
built (the OpenAI passthrough, or a provider of another dialect)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.gateway import metrics
from services.gateway.catalog_view import ChannelView
from services.gateway.context import Gateway
from services.gateway.dialects.errors import TranslationError
from services.gateway.errors import (
    BadRequest,
    BadUpstream,
    GatewayError,
    NoChannel,
    RateLimited,
    UpstreamTimeout,
)
from services.gateway.providers import anthropic as p_anthropic
from services.gateway.providers import gemini as p_gemini
from services.gateway.providers import openai as oai
from services.gateway.relay import Call, tracer
from services.gateway.routing import candidates
from services.gateway.upstream_http import Response, UpstreamError
from shared.catalog import Model

log = logging.getLogger("faregate.gateway.attempts")

_ERROR_BODY_LIMIT = 64 * 1024


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
        client=BadRequest("The upstream provider rejected the request as invalid.", code="upstream_rejected_request"),
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
            resp = await gw.http.post(url, headers, content, call.upstream_written)
            if resp.status_code != 200:
                await _read_capped(resp)
                raise _classify(resp.status_code, resp.headers)
            opened = Opened(resp, channel, model, upstream_model, translated=translated)
            if stream:
                opened.chunks = resp.aiter_raw()
                opened.first = await _stream_head(opened.provider, opened.chunks)
            else:
                opened.body = await resp.aread()
            return opened
    except AttemptFailed:
        await close_response(resp)
        raise
    except TimeoutError:
        await close_response(resp)
        raise AttemptFailed(
            "timeout",
            retryable=True,
            breaker=True,
            client=UpstreamTimeout("The upstream did not answer in time."),
        ) from None
    except StopAsyncIteration:
        await close_response(resp)
        raise AttemptFailed(
            "empty_stream",
            retryable=True,
            breaker=True,
            client=BadUpstream("The upstream sent an empty response."),
        ) from None
    except UpstreamError as exc:
        await close_response(resp)
        raise AttemptFailed(
            f"connect_error:{type(exc).__name__}",
            retryable=True,
            breaker=True,
            client=NoChannel("No channel is available to serve this request right now."),
        ) from None
    except BaseException:
        await close_response(resp)
        raise


# How much of a stream's head is read to find its first whole event; past it, the stream is forwarded as is.
_HEAD_LIMIT = 64 * 1024


async def _stream_head(provider: Any, chunks: AsyncIterator[bytes]) -> bytes:
    """The first chunk of a stream, read on (bounded, and under the caller's first-byte timeout) until its first
    event is whole; raises AttemptFailed when that event is the upstream's error. The bytes come back as they
    came, for the stream to forward.

    Nothing has reached the client yet, so an error here can still go to the next channel."""
    head = await anext(chunks)  # StopAsyncIteration: the caller's empty_stream
    verdict = provider.stream_head(head)
    while verdict == "incomplete" and len(head) < _HEAD_LIMIT:
        try:
            head += await anext(chunks)
        except StopAsyncIteration:
            # The stream ended inside its first event: what came is all there is to judge.
            verdict = provider.stream_head(head + b"\n\n")
            break
        verdict = provider.stream_head(head)
    if verdict == "error":
        raise AttemptFailed(
            "error_first_event",
            retryable=True,
            breaker=True,
            client=BadUpstream("The upstream reported an error before the answer started."),
        )
    if verdict == "invalid_request":
        raise AttemptFailed(
            "rejected_first_event",
            retryable=False,
            breaker=False,
            client=BadRequest(
                "The upstream provider rejected the request as invalid.", code="upstream_rejected_request"
            ),
        )
    return head


async def _read_capped(resp: Response) -> None:
    """Drain (a bounded part of) an error answer so the connection can be reused; its content is not used."""
    total = 0
    async for chunk in resp.aiter_raw():
        total += len(chunk)
        if total > _ERROR_BODY_LIMIT:
            break


async def close_response(resp: Response | None) -> None:
    close_response_now(resp)


def close_response_now(resp: Response | None) -> None:
    if resp is not None:
        try:
            resp.close()
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
        raise RateLimited("The upstream is rate limiting; retry later.", retry_after=min(waits) if waits else 1)
    last = failures[-1]
    raise last.client


class ClientGone(Exception):
    """The client hung up before the answer started; the upstream call was cancelled."""


# A watcher task per request costs more than most upstream answers on a fast network take; it is started only
# for a request still waiting after this long (any real model call), so a quick answer never pays for one.
WATCH_AFTER_S = 0.02


async def open_upstream_for(
    disconnected: Callable[[], Awaitable[None]], gw: Gateway, call: Call, model: Model, plan: Plan
) -> Opened:
    """`open_upstream`, abandoned at once (and the upstream request cancelled) if the client disconnects.

    The attempts run in the request's own task; a watcher, started once the wait passes WATCH_AFTER_S, cancels
    that task when the client leaves, which cancels whatever upstream read is pending."""
    me = asyncio.current_task()
    assert me is not None
    gone = False
    watcher: asyncio.Future[None] | None = None

    async def watch() -> None:
        nonlocal gone
        await disconnected()  # returns when the client has gone
        gone = True
        me.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
    try:
        return await open_upstream(gw, call, model, plan)
    except asyncio.CancelledError:
        if gone:
            me.uncancel()
            raise ClientGone() from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
