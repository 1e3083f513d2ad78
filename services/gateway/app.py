"""`faregate gateway`: the client-facing API. Handlers are thin; the request path lives in relay.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.params import FromPath
from litestar.response import Stream
from opentelemetry import trace

from services.gateway import attempts, channel_test, clients, metrics, relay, streams, tokenizer, upstream_http
from services.gateway.admission import Ticket
from services.gateway.auth import client_address
from services.gateway.config import GatewaySettings
from services.gateway.context import Gateway
from services.gateway.dialects import openai as oai_dialect
from services.gateway.dialects.errors import TranslationError
from services.gateway.errors import (
    BadRequest,
    BadUpstream,
    BodyTooLarge,
    GatewayError,
    ModelNotFound,
    error_body,
    headers_for,
)
from services.gateway.providers import openai as oai
from services.gateway.relay import Call
from services.gateway.usage import Usage
from shared import config, logs, telemetry, web
from shared.catalog import Model
from shared.config import CommonSettings
from shared.events import ModelPrice
from shared.pricing import cost_micros
from shared.runtime import open_resources
from shared.web import NotFound, ServiceError, Unauthorized, ops_handlers, request_id_middleware, service_error_handler

log = logging.getLogger("faregate.gateway")
_json = msgspec.json.Encoder().encode

CATALOG_SAFETY_RELOAD_S = 30.0  # events keep the catalog fresh; this only bounds the damage of a missed one


def gateway_of(request: Request[Any, Any, Any]) -> Gateway:
    gw: Gateway = request.app.state.gw
    return gw


def client_ip_of(request: Request[Any, Any, Any]) -> str:
    peer = request.client.host if request.client else ""
    trusted = gateway_of(request).trusted_proxies
    return client_address(peer, request.headers.get("x-forwarded-for"), trusted) if trusted else peer


def new_call(request: Request[Any, Any, Any], dialect: str, endpoint: str) -> Call:
    metrics.INFLIGHT.inc()
    call = Call(
        request_id=request.scope["state"]["request_id"],
        dialect=dialect,
        endpoint=endpoint,
        client_ip=client_ip_of(request),
    )
    # With no tracer provider installed (the default: exporter "none") even a no-op span costs measurable
    # microseconds per request, so none is made.
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        call.span = relay.tracer.start_span(relay.OPERATION_OF[endpoint], kind=trace.SpanKind.SERVER)
    return call


def error_response(dialect: str, exc: GatewayError) -> Response[bytes]:
    return Response(
        error_body(dialect, exc.status, exc.code, exc.message, exc.field),
        status_code=exc.status,
        media_type="application/json",
        headers=headers_for(exc),
    )


def ratelimit_headers(call: Call, rpm: int, tpm: int) -> dict[str, str]:
    t: Ticket | None = call.ticket
    if t is None:
        return {}
    out: dict[str, str] = {}
    reset = f"{max(t.reset_ms, 0) / 1000:.3f}s"
    if rpm:
        out["x-ratelimit-limit-requests"] = str(rpm)
        out["x-ratelimit-remaining-requests"] = str(max(rpm - t.key_rpm_used, 0))
        out["x-ratelimit-reset-requests"] = reset
    if tpm:
        out["x-ratelimit-limit-tokens"] = str(tpm)
        out["x-ratelimit-remaining-tokens"] = str(max(tpm - t.key_tpm_used, 0))
        out["x-ratelimit-reset-tokens"] = reset
    return out


async def read_body(request: Request[Any, Any, Any], limit: int) -> bytes:
    try:
        return await request.body()
    except RequestEntityTooLarge:
        raise BodyTooLarge(f"The request body is larger than the {limit} bytes this gateway accepts.") from None


async def guarded(gw: Gateway, call: Call, work: Any) -> Response[Any]:
    """Run one relay; whatever happens, the call is recorded exactly once (a stream records when it ends)."""
    handed_to_stream = False
    try:
        if call.span is None:
            response: Response[Any] = await work
        else:
            with trace.use_span(call.span, end_on_exit=False):
                response = await work
        handed_to_stream = isinstance(response, Stream)
        return response
    except GatewayError as exc:
        call.fail(exc)
        return error_response(call.dialect, exc)
    except attempts.ClientGone:
        call.status, call.error_code = 499, "client_disconnected"
        return Response(b"", status_code=499)
    except Exception:
        log.exception("request failed unexpectedly")
        failed = GatewayError("The gateway failed to process the request.")
        call.fail(failed)
        return error_response(call.dialect, failed)
    except BaseException:
        call.status, call.error_code = 499, "client_disconnected"
        raise
    finally:
        if not handed_to_stream:
            gw.spawn(relay.record(gw, call))


# --- OpenAI: chat completions ------------------------------------------------------------------------------


async def _chat(
    gw: Gateway,
    call: Call,
    request: Request[Any, Any, Any],
    path_model: str | None = None,
    path_stream: bool | None = None,
) -> Response[Any]:
    """One chat request in any client dialect. Gemini puts the model and streaming in the URL."""
    raw = await read_body(request, gw.settings.max_body_bytes)
    snap = await relay.authenticate(gw, call, relay.api_key_of(request.headers, request.query_params))
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
    call.ticket = await relay.admit(gw, call, snap, amount, prompt_estimate)
    metrics.OVERHEAD.observe(time.perf_counter() - call.started)
    sse = call.dialect != "gemini" or request.query_params.get("alt") == "sse"
    plan = attempts.Plan(call.dialect, body, internal, "/chat/completions", stream, sse)
    opened = await attempts.open_upstream_for(request.receive, gw, call, model, plan)
    headers = ratelimit_headers(call, snap.rpm_limit, snap.tpm_limit)
    if stream:
        headers["cache-control"] = "no-cache"
        if opened.translated:
            content = streams.translated_stream_body(gw, call, opened, plan)
        else:
            content = streams.stream_body(gw, call, opened, oai_dialect.wants_usage(body), body["messages"])
        return Stream(content, media_type="text/event-stream" if sse else "application/json", headers=headers)
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
        return Response(opened.body, media_type="application/json", headers=headers)
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
    return Response(_json(out), media_type="application/json", headers=headers)


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any]:
    gw = gateway_of(request)
    call = new_call(request, "openai", "chat")
    return await guarded(gw, call, _chat(gw, call, request))


# --- Anthropic, Gemini and Responses clients (translated to and from the internal chat form)
# ------------------


@post("/v1/messages", status_code=200)
async def anthropic_messages(request: Request[Any, Any, Any]) -> Response[Any]:
    gw = gateway_of(request)
    call = new_call(request, "anthropic", "messages")
    return await guarded(gw, call, _chat(gw, call, request))


@post("/v1/responses", status_code=200)
async def openai_responses(request: Request[Any, Any, Any]) -> Response[Any]:
    gw = gateway_of(request)
    call = new_call(request, "responses", "responses")
    return await guarded(gw, call, _chat(gw, call, request))


@post(["/v1beta/models/{target:str}", "/v1/models/{target:str}"], status_code=200)
async def gemini_generate(request: Request[Any, Any, Any], target: FromPath[str]) -> Response[Any]:
    gw = gateway_of(request)
    call = new_call(request, "gemini", "chat")
    # (Litestar hands this parameter over with a leading slash when a :path route shares the prefix.)
    model, _, action = target.lstrip("/").rpartition(":")
    if action not in ("generateContent", "streamGenerateContent") or not model:
        bad = GatewayError(
            f"Unknown method '{action}'; use generateContent or streamGenerateContent.",
            status=404,
            code="not_found",
        )
        call.fail(bad)
        gw.spawn(relay.record(gw, call))
        return error_response("gemini", bad)
    return await guarded(gw, call, _chat(gw, call, request, model, action == "streamGenerateContent"))


@post("/v1/messages/count_tokens", status_code=200)
async def anthropic_count_tokens(request: Request[Any, Any, Any]) -> Response[Any]:
    """Counted here with the tokenizer: no upstream call, nothing to bill, so no usage event."""
    gw = gateway_of(request)
    call = Call(
        request_id="",
        dialect="anthropic",
        endpoint="count_tokens",
        client_ip=client_ip_of(request),
    )
    try:
        raw = await read_body(request, gw.settings.max_body_bytes)
        snap = await relay.authenticate(gw, call, relay.api_key_of(request.headers, request.query_params))
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
        return error_response("anthropic", exc)
    return Response({"input_tokens": count})


# --- OpenAI: embeddings and images (no stream, plain passthrough) -------------------------------------------


class _Images(msgspec.Struct):
    data: list[Any] = []


def per_image_price(model: Model) -> ModelPrice:
    """A per-image price carried in the token-price fields billing already understands: one "output token" per
    image at image_price * 1e6 per million, so `cost_micros` gives exactly images * image_price (* group ratio
    * (1 - discount)) without a new event field."""
    return ModelPrice(input=0, output=model.image_price_micros * 1_000_000)


async def _plain(gw: Gateway, call: Call, request: Request[Any, Any, Any], kind: str, path: str) -> Response[Any]:
    raw = await read_body(request, gw.settings.max_body_bytes)
    snap = await relay.authenticate(gw, call, relay.api_key_of(request.headers, request.query_params))
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
    call.ticket = await relay.admit(gw, call, snap, amount, prompt_estimate)
    metrics.OVERHEAD.observe(time.perf_counter() - call.started)
    opened = await attempts.open_upstream_for(
        request.receive, gw, call, model, attempts.Plan("openai", body, body, path, False)
    )
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
    return Response(
        opened.body,
        media_type="application/json",
        headers=ratelimit_headers(call, snap.rpm_limit, snap.tpm_limit),
    )


@post("/v1/embeddings", status_code=200)
async def embeddings(request: Request[Any, Any, Any]) -> Response[Any]:
    gw = gateway_of(request)
    call = new_call(request, "openai", "embeddings")
    return await guarded(gw, call, _plain(gw, call, request, "embedding", "/embeddings"))


@post("/v1/images/generations", status_code=200)
async def images(request: Request[Any, Any, Any]) -> Response[Any]:
    gw = gateway_of(request)
    call = new_call(request, "openai", "images")
    return await guarded(gw, call, _plain(gw, call, request, "image", "/images/generations"))


# --- OpenAI: models
# ------------------------------------------------------------------------------------------


def _model_object(name: str, owner: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": owner}


async def _authed(request: Request[Any, Any, Any]) -> tuple[Gateway, Any]:
    gw = gateway_of(request)
    call = Call(
        request_id="",
        dialect="openai",
        endpoint="models",
        client_ip=client_ip_of(request),
    )
    snap = await relay.authenticate(gw, call, relay.api_key_of(request.headers, request.query_params))
    return gw, snap


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> Response[Any]:
    try:
        gw, snap = await _authed(request)
    except GatewayError as exc:
        return error_response("openai", exc)
    return Response(
        {"object": "list", "data": [_model_object(m.name, m.provider) for m in gw.catalog.models_for(snap)]}
    )


@get("/v1/models/{model_id:path}")
async def get_model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> Response[Any]:
    name = model_id.lstrip("/")
    try:
        gw, snap = await _authed(request)
        model = gw.catalog.models.get(name)
        if model is None or not gw.catalog.allowed(snap, name):
            raise ModelNotFound(f"The model `{name}` does not exist or you do not have access to it.")
    except GatewayError as exc:
        return error_response("openai", exc)
    return Response(_model_object(model.name, model.provider))


# --- internal
# ------------------------------------------------------------------------------------------------


@get("/internal/channels/health")
async def channels_health(request: Request[Any, Any, Any]) -> dict[str, Any]:
    gw = gateway_of(request)
    if request.headers.get("x-internal-token") != gw.common.internal_token:
        raise Unauthorized("internal endpoint: missing or wrong X-Internal-Token")
    channels = gw.catalog.catalog.channels
    report = await gw.breaker.report(c.id for c in channels)
    names = {c.id: c.name for c in channels}
    for row in report:
        row["name"] = names.get(row["channel_id"], "")
    return {"channels": report}


@post("/internal/channels/{channel_id:str}/test", status_code=200)
async def channel_test_handler(request: Request[Any, Any, Any], channel_id: FromPath[str]) -> dict[str, Any]:
    gw = gateway_of(request)
    if request.headers.get("x-internal-token") != gw.common.internal_token:
        raise Unauthorized("internal endpoint: missing or wrong X-Internal-Token")
    try:
        return await channel_test.run_channel_test(gw, channel_id)
    except channel_test.UnknownChannel:
        raise NotFound(f"no channel {channel_id}") from None


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Framework errors (unknown route, wrong method) in the OpenAI shape rather than Litestar's."""
    status = exc.status_code
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request_error")
    return Response(
        error_body("openai", status, code, str(exc.detail)), status_code=status, media_type="application/json"
    )


def create_app(settings: GatewaySettings, common: CommonSettings) -> Litestar:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_resources(common, "gateway", use_db=False) as res:
            http = upstream_http.Client(
                connect_timeout_s=settings.connect_timeout_s,
                max_idle_per_origin=settings.max_upstream_connections,
            )
            internal = httpx.AsyncClient(timeout=5)
            gw = Gateway(settings=settings, common=common, res=res, http=http, internal=internal)
            tokenizer.configure(f"{common.data_dir}/tiktoken")
            await gw.load_catalog()
            await gw.subscribe()
            res.spawn(gw.breaker.refresh_forever(lambda: list(gw.catalog.channels), res.stop), "breaker-refresh")
            res.spawn(_reload_catalog_forever(gw), "catalog-reload")
            app.state.gw = gw
            app.state.ready_checks.update(res.ready_checks())
            try:
                yield
            finally:
                await gw.drain()
                await http.aclose()
                await internal.aclose()

    ready_checks: dict[str, Any] = {}
    return Litestar(
        logging_config=web.logging_config(),
        route_handlers=[
            # The gateway serves through NATS and Redis outages (spool, caches): they degrade readiness only.
            *ops_handlers(ready_checks, degrade_only=("nats", "redis")),
            chat_completions,
            anthropic_messages,
            anthropic_count_tokens,
            openai_responses,
            gemini_generate,
            embeddings,
            images,
            list_models,
            get_model,
            channels_health,
            channel_test_handler,
        ],
        lifespan=[lifespan],
        middleware=[request_id_middleware],
        exception_handlers={HTTPException: http_exception_handler, ServiceError: service_error_handler},
        request_max_body_size=settings.max_body_bytes,
        state=_state(ready_checks),
        debug=False,
    )


def _state(ready_checks: dict[str, Any]) -> Any:
    from litestar.datastructures import State

    return State({"ready_checks": ready_checks})


async def _reload_catalog_forever(gw: Gateway) -> None:
    while not gw.res.stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gw.res.stop.wait(), CATALOG_SAFETY_RELOAD_S)
        if not gw.res.stop.is_set():
            with contextlib.suppress(Exception):
                await gw.load_catalog()


def from_env() -> Litestar:
    settings = config.load(GatewaySettings)
    common = config.load(CommonSettings)
    logs.setup("gateway", common.log_level, common.log_format)
    telemetry.setup("gateway", common.otel_exporter, common.otel_endpoint)
    return create_app(settings, common)
