"""The paid client endpoints (OpenAI chat, Responses, Anthropic messages, Gemini, embeddings, images, token
counting): thin functions from an `Incoming` request to a `Reply`, served by front.py without the framework.
The request path itself lives in relay.py (auth, admission, recording), attempts.py and streams.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

import msgspec
from opentelemetry import trace

from services.gateway import attempts, clients, metrics, relay, streams, tokenizer
from services.gateway.admission import Admitting, Ticket
from services.gateway.auth import client_address
from services.gateway.context import Gateway
from services.gateway.dialects import openai as oai_dialect
from services.gateway.dialects.errors import TranslationError
from services.gateway.errors import BadRequest, BadUpstream, GatewayError
from services.gateway.front import ClientGone, Incoming, Reply, error_reply
from services.gateway.providers import openai as oai
from services.gateway.relay import Call
from services.gateway.usage import Usage
from shared.catalog import Model
from shared.events import ModelPrice
from shared.pricing import cost_micros

log = logging.getLogger("faregate.gateway")
_json = msgspec.json.Encoder().encode

_SSE = "text/event-stream"


def client_ip_of(gw: Gateway, incoming: Incoming) -> str:
    trusted = gw.trusted_proxies
    if not trusted:
        return incoming.peer
    return client_address(incoming.peer, incoming.headers.get("x-forwarded-for"), trusted)


def new_call(gw: Gateway, incoming: Incoming, dialect: str, endpoint: str) -> Call:
    metrics.INFLIGHT.inc()
    call = Call(
        request_id=incoming.request_id,
        dialect=dialect,
        endpoint=endpoint,
        client_ip=client_ip_of(gw, incoming),
    )
    # With no tracer provider installed (the default: exporter "none") even a no-op span costs measurable
    # microseconds per request, so none is made.
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        call.span = relay.tracer.start_span(relay.OPERATION_OF[endpoint], kind=trace.SpanKind.SERVER)
    return call


def ratelimit_headers(call: Call, rpm: int, tpm: int, into: dict[str, str]) -> dict[str, str]:
    t: Ticket | None = call.ticket
    if t is None or not (rpm or tpm):
        return into
    reset = f"{max(t.reset_ms, 0) / 1000:.3f}s"
    if rpm:
        into["x-ratelimit-limit-requests"] = str(rpm)
        into["x-ratelimit-remaining-requests"] = str(max(rpm - t.key_rpm_used, 0))
        into["x-ratelimit-reset-requests"] = reset
    if tpm:
        into["x-ratelimit-limit-tokens"] = str(tpm)
        into["x-ratelimit-remaining-tokens"] = str(max(tpm - t.key_tpm_used, 0))
        into["x-ratelimit-reset-tokens"] = reset
    return into


async def guarded(gw: Gateway, call: Call, work: Coroutine[Any, Any, Reply]) -> Reply:
    """Run one relay; whatever happens, the call is recorded exactly once: a stream when it ends, any other
    answer once it was handed to the server (`Reply.then`), a request that raised at once."""
    reply: Reply | None = None
    try:
        if call.span is None:
            reply = await work
        else:
            with trace.use_span(call.span, end_on_exit=False):
                reply = await work
    except GatewayError as exc:
        call.fail(exc)
        reply = error_reply(call.dialect, exc)
    except (attempts.ClientGone, ClientGone):
        call.status, call.error_code = 499, "client_disconnected"
        gw.spawn(relay.record(gw, call))
        raise ClientGone() from None
    except Exception:
        log.exception("request failed unexpectedly")
        failed = GatewayError("The gateway failed to process the request.")
        call.fail(failed)
        reply = error_reply(call.dialect, failed)
    except BaseException:
        call.status, call.error_code = 499, "client_disconnected"
        gw.spawn(relay.record(gw, call))
        raise
    if reply.stream is None:
        reply.then = lambda: relay.record_soon(gw, call)
    return reply


async def admit_and_open(gw: Gateway, call: Call, incoming: Incoming, snap: Any, model: Model, plan: attempts.Plan,
                         amount: int, token_estimate: int) -> attempts.Opened:
    """Admit the request (limits, reservation), then open the upstream answer; both at once when this worker
    knows of no limit near (relay.may_overlap), so the client waits for one round trip instead of two. A refusal
    then closes the upstream answer unread; however it ends, a reservation made is settled by `record`.

    Overlapped, the admission is written to Redis right after the upstream request: the upstream's answer, the
    longer wait, starts sooner, and the admission's own write and Redis's work fall within that wait.

    A busy key with no limit but its concurrency is admitted on its lease instead, with no round trip at all
    (leases.py)."""
    leasable = relay.may_lease(gw, snap)
    if leasable:
        call.ticket = gw.admission.admit_leased(call.request_id, snap.account_id, snap.key_id, amount,
                                                token_estimate, snap.concurrency_limit)
        if call.ticket is not None:
            metrics.LEASED.inc()
            metrics.OVERHEAD.observe(time.perf_counter() - call.started)
            return await attempts.open_upstream_for(incoming.disconnected, gw, call, model, plan)
    if not relay.may_overlap(gw, snap, amount):
        call.ticket = await relay.admit(gw, call, snap, amount, token_estimate)
        if leasable:
            gw.admission.lease_wanted(call.ticket, snap.concurrency_limit)
        metrics.OVERHEAD.observe(time.perf_counter() - call.started)
        return await attempts.open_upstream_for(incoming.disconnected, gw, call, model, plan)
    metrics.OVERLAPPED.inc()
    metrics.OVERHEAD.observe(time.perf_counter() - call.started)
    sent: list[Admitting] = []

    def send_admit() -> None:  # once, at the first upstream write (or below, if no attempt got as far)
        if not sent:
            sent.append(relay.send_admit(gw, call, snap, amount, token_estimate, settles_first=False))

    call.upstream_written = send_admit
    try:
        opened = await attempts.open_upstream_for(incoming.disconnected, gw, call, model, plan)
    except BaseException:
        # The attempt failed or the client left: still learn the admission's outcome, so a reservation it
        # made is given back when the call is recorded.
        call.upstream_written = None
        send_admit()
        with contextlib.suppress(Exception):
            call.ticket = await asyncio.shield(asyncio.ensure_future(relay.admitted(gw, call, snap, sent[0])))
        raise
    call.upstream_written = None
    send_admit()
    try:
        call.ticket = await relay.admitted(gw, call, snap, sent[0])
    except BaseException:
        await attempts.close_response(opened.resp)
        raise
    if leasable:
        gw.admission.lease_wanted(call.ticket, snap.concurrency_limit)
    return opened


# --- chat, in every client dialect ---------------------------------------------------------------------------


async def _chat(
    gw: Gateway, call: Call, incoming: Incoming, path_model: str | None = None, path_stream: bool | None = None
) -> Reply:
    """One chat request in any client dialect. Gemini puts the model and streaming in the URL."""
    raw = await incoming.body(gw.settings.max_body_bytes)
    snap = await relay.authenticate(gw, call, relay.api_key_of(incoming.headers, incoming.query_params))
    body = relay.parse_json_object(raw)
    name = path_model if path_model is not None else body.get("model")
    model = relay.resolve_model(gw, call, snap, name, "chat")
    stream = path_stream if path_stream is not None else body.get("stream") is True
    call.stream = stream
    if call.dialect == "openai":
        internal = body
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise BadRequest("'messages' must be a non-empty array.", param="messages")
    else:
        try:
            internal = clients.to_internal(call.dialect, body, model.name, stream)
        except TranslationError as exc:
            raise BadRequest(exc.message, param=exc.field) from None
    max_out = internal.get("max_completion_tokens") or internal.get("max_tokens") or 0
    n = internal.get("n") or 1
    if not isinstance(max_out, int) or max_out < 0:
        raise BadRequest("'max_tokens' must be a positive integer.", param="max_tokens")
    if not isinstance(n, int) or not 1 <= n <= 128:
        raise BadRequest("'n' must be an integer between 1 and 128.", param="n")
    # A cheap upper estimate of the prompt (JSON bytes / 2), not a tokenization: it only sizes the reservation
    # and the TPM charge, both corrected to the real count when the request ends.
    prompt_estimate = len(raw) // 2 + 16
    amount = relay.worst_case(gw, model, call, prompt_estimate, max_out, n)
    sse = call.dialect != "gemini" or incoming.query_params.get("alt") == "sse"
    plan = attempts.Plan(call.dialect, body, internal, "/chat/completions", stream, sse)
    opened = await admit_and_open(gw, call, incoming, snap, model, plan, amount, prompt_estimate)
    headers = ratelimit_headers(call, snap.rpm_limit, snap.tpm_limit, {})
    if stream:
        headers["cache-control"] = "no-cache"
        if opened.translated:
            content = streams.translated_stream_body(gw, call, opened, plan)
        else:
            content = streams.stream_body(gw, call, opened, oai_dialect.wants_usage(body), body["messages"])
        return Reply(200, headers=headers, media_type=_SSE if sse else "application/json", stream=content)
    await attempts.close_response(opened.resp)
    call.ttft_ms = int((time.perf_counter() - call.started) * 1000)
    if not opened.translated:
        try:
            usage = oai.response_usage(opened.body)
        except Exception:
            raise BadUpstream("The upstream sent a response that is not valid JSON.") from None
        if usage is None:
            await tokenizer.ready()
        call.usage = usage or Usage(
            prompt_tokens=tokenizer.count_chat_prompt(body["messages"]),
            completion_tokens=tokenizer.count_text(oai.response_text(opened.body)),
        )
        return Reply(200, opened.body, headers)
    try:
        answer = opened.provider.response_to_internal(opened.body, opened.upstream_model)
        reported = oai_dialect.response_usage(answer)
        texts: list[str] = []
        if reported is None:
            for choice in answer.get("choices") or ():
                message = choice.get("message") or {}
                texts.append(message.get("content") or "")
    except Exception:
        raise BadUpstream("The upstream sent a response that could not be read.") from None
    if reported is None:
        await tokenizer.ready()
    call.usage = (
        relay._usage_of(reported)
        if reported is not None
        else Usage(
            prompt_tokens=tokenizer.count_chat_prompt(internal.get("messages")),
            completion_tokens=tokenizer.count_text("".join(texts)),
        )
    )
    if reported is None:
        answer["usage"] = oai_dialect.usage_to_openai(relay._token_usage(call.usage))
    out = clients.response_from_internal(call.dialect, answer, body, model.name)
    return Reply(200, _json(out), headers)


_CHAT_ENDPOINT = {"openai": "chat", "anthropic": "messages", "responses": "responses"}


async def chat(gw: Gateway, incoming: Incoming, dialect: str) -> Reply:
    """OpenAI chat completions, Anthropic messages, OpenAI Responses: one path, three client dialects."""
    call = new_call(gw, incoming, dialect, _CHAT_ENDPOINT[dialect])
    return await guarded(gw, call, _chat(gw, call, incoming))


GEMINI_PREFIXES = ("/v1beta/models/", "/v1/models/")


async def gemini_generate(gw: Gateway, incoming: Incoming, dialect: str) -> Reply:
    """`POST /v1beta/models/{model}:generateContent` (or :streamGenerateContent)."""
    call = new_call(gw, incoming, "gemini", "chat")
    path = incoming.path
    target = next((path[len(p) :] for p in GEMINI_PREFIXES if path.startswith(p)), "")
    model, _, action = target.rpartition(":")
    if action not in ("generateContent", "streamGenerateContent") or not model:
        bad = GatewayError(
            f"Unknown method '{action}'; use generateContent or streamGenerateContent.",
            status=404,
            code="not_found",
        )
        call.fail(bad)
        gw.spawn(relay.record(gw, call))
        return error_reply("gemini", bad)
    return await guarded(gw, call, _chat(gw, call, incoming, model, action == "streamGenerateContent"))


async def anthropic_count_tokens(gw: Gateway, incoming: Incoming, dialect: str) -> Reply:
    """Counted here with the tokenizer: no upstream call, nothing to bill, so no usage event."""
    call = Call(request_id="", dialect="anthropic", endpoint="count_tokens", client_ip=client_ip_of(gw, incoming))
    try:
        raw = await incoming.body(gw.settings.max_body_bytes)
        snap = await relay.authenticate(gw, call, relay.api_key_of(incoming.headers, incoming.query_params))
        body = relay.parse_json_object(raw)
        relay.resolve_model(gw, call, snap, body.get("model"), "chat")
        try:
            internal = clients.to_internal("anthropic", {**body, "max_tokens": 1}, str(body.get("model")), False)
        except TranslationError as exc:
            raise BadRequest(exc.message, param=exc.field) from None
        tools = internal.get("tools")
        await tokenizer.ready()
        count = tokenizer.count_chat_prompt(internal["messages"])
        if tools:
            count += tokenizer.count_text(_json(tools).decode())
    except GatewayError as exc:
        return error_reply("anthropic", exc)
    return Reply(200, _json({"input_tokens": count}))


# --- OpenAI: embeddings and images (no stream, plain passthrough) -------------------------------------------


class _Images(msgspec.Struct):
    data: list[Any] = []


def per_image_price(model: Model) -> ModelPrice:
    """A per-image price carried in the token-price fields billing already understands: one "output token" per
    image at image_price * 1e6 per million, so `cost_micros` gives exactly images * image_price (* group ratio
    * (1 - discount)) without a new event field."""
    return ModelPrice(input=0, output=model.image_price_micros * 1_000_000)


async def _plain(gw: Gateway, call: Call, incoming: Incoming, kind: str, path: str) -> Reply:
    raw = await incoming.body(gw.settings.max_body_bytes)
    snap = await relay.authenticate(gw, call, relay.api_key_of(incoming.headers, incoming.query_params))
    body = relay.parse_json_object(raw)
    model = relay.resolve_model(gw, call, snap, body.get("model"), kind)
    prompt_estimate = len(raw) // 2 + 16
    n = body.get("n") or 1
    if kind == "image" and (not isinstance(n, int) or not 1 <= n <= 10):
        raise BadRequest("'n' must be an integer between 1 and 10.", param="n")
    if kind == "image" and model.image_price_micros:
        amount = cost_micros(
            per_image_price(model),
            prompt_tokens=0,
            completion_tokens=n,
            group_ratio_ppm=call.group_ratio_ppm,
            discount_ppm=call.discount_ppm,
        )
    else:
        amount = relay.worst_case(gw, model, call, prompt_estimate, 1 if kind == "embedding" else 0, n)
    plan = attempts.Plan("openai", body, body, path, False)
    opened = await admit_and_open(gw, call, incoming, snap, model, plan, amount, prompt_estimate)
    await attempts.close_response(opened.resp)
    try:
        usage = oai.response_usage(opened.body)
        images = msgspec.json.decode(opened.body, type=_Images).data if kind == "image" else []
    except Exception:
        raise BadUpstream("The upstream sent a response that is not valid JSON.") from None
    if usage is None and kind == "embedding":
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else [t for t in inputs or () if isinstance(t, str)]
        await tokenizer.ready()
        usage = Usage(prompt_tokens=sum(tokenizer.count_text(t) for t in texts))
    if kind == "image" and model.image_price_micros:
        call.price = per_image_price(model)
        call.cost_price = None
        usage = Usage(completion_tokens=len(images))
    call.usage = usage or Usage()
    return Reply(200, opened.body, ratelimit_headers(call, snap.rpm_limit, snap.tpm_limit, {}))


async def embeddings(gw: Gateway, incoming: Incoming, dialect: str) -> Reply:
    call = new_call(gw, incoming, "openai", "embeddings")
    return await guarded(gw, call, _plain(gw, call, incoming, "embedding", "/embeddings"))


async def images(gw: Gateway, incoming: Incoming, dialect: str) -> Reply:
    call = new_call(gw, incoming, "openai", "images")
    return await guarded(gw, call, _plain(gw, call, incoming, "image", "/images/generations"))


EXACT_ROUTES = {
    "/v1/chat/completions": ("openai", chat),
    "/v1/messages": ("anthropic", chat),
    "/v1/responses": ("responses", chat),
    "/v1/messages/count_tokens": ("anthropic", anthropic_count_tokens),
    "/v1/embeddings": ("openai", embeddings),
    "/v1/images/generations": ("openai", images),
}
PREFIX_ROUTES = tuple((prefix, "gemini", gemini_generate) for prefix in GEMINI_PREFIXES)
