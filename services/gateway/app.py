"""`faregate gateway`: the client-facing API. The paid endpoints are handlers.py, served by front.py ahead of
Litestar; Litestar serves the rest (ops, model listings, internal endpoints). The request path lives in relay.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath

from services.gateway import channel_test, handlers, relay, tokenizer, upstream_http
from services.gateway.auth import client_address
from services.gateway.config import GatewaySettings
from services.gateway.context import INTERNAL_TIMEOUT_S, Gateway
from services.gateway.errors import (
    GatewayError,
    ModelNotFound,
    error_body,
    headers_for,
)
from services.gateway.front import GatewayApp
from services.gateway.relay import Call
from shared import config, logs, telemetry, web
from shared.config import CommonSettings
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


def error_response(dialect: str, exc: GatewayError) -> Response[bytes]:
    return Response(
        error_body(dialect, exc.status, exc.code, exc.message, exc.field),
        status_code=exc.status,
        media_type="application/json",
        headers=headers_for(exc),
    )


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


def create_app(settings: GatewaySettings, common: CommonSettings) -> GatewayApp:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_resources(common, "gateway", use_db=False) as res:
            # One TLS context for both clients: each parses the system's CA bundle into OpenSSL's memory, and a
            # second cost every worker 0.8 MB (and 30 ms of start-up) for the same settings.
            tls = ssl.create_default_context()
            http = upstream_http.Client(
                connect_timeout_s=settings.connect_timeout_s,
                max_idle_per_origin=settings.max_upstream_connections,
                ssl_context=tls,
            )
            internal = upstream_http.Client(
                connect_timeout_s=INTERNAL_TIMEOUT_S, max_idle_per_origin=32, ssl_context=tls
            )
            gw = Gateway(settings=settings, common=common, res=res, http=http, internal=internal)
            tokenizer.configure(f"{common.data_dir}/tiktoken")
            await gw.load_catalog()
            await gw.subscribe()
            res.spawn(gw.breaker.refresh_forever(lambda: list(gw.catalog.channels), res.stop), "breaker-refresh")
            res.spawn(_reload_catalog_forever(gw), "catalog-reload")
            res.spawn(gw.admission.leases.keep_forever(res.stop), "lease-keeper")
            app.state.gw = gw
            app.state.ready_checks.update(res.ready_checks())
            try:
                yield
            finally:
                await relay.drain(gw)
                await gw.admission.leases.release()
                await gw.fast_redis.aclose()
                await http.aclose()
                await internal.aclose()

    ready_checks: dict[str, Any] = {}
    app = GatewayApp(
        logging_config=web.logging_config(),
        route_handlers=[
            # The gateway serves through NATS and Redis outages (spool, caches): they degrade readiness only.
            *ops_handlers(ready_checks, degrade_only=("nats", "redis")),
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
    app.route_paid(handlers.EXACT_ROUTES, handlers.PREFIX_ROUTES)
    return app


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
