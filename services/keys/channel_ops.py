"""/api/admin/channels/health and /api/admin/channels/{id}/test: the gateway's view of the channels (circuit
breaker state, an on-demand test request) for the console. The gateway owns both; keys only authenticates the
admin and forwards to the gateway's internal endpoints."""

from __future__ import annotations

from typing import Any

import httpx
from litestar import Router, get, post
from litestar.di import Provide
from litestar.params import FromPath

from services.keys.context import Ctx
from services.keys.web import CtxDep, WhoDep, provide_admin, provide_principal
from shared.web import NotFound, ServiceError

# A test waits for the upstream's first byte (the gateway's first-byte timeout); leave room above it.
_TIMEOUT_S = 60.0


class GatewayUnavailable(ServiceError):
    status = 502
    code = "gateway_unavailable"


async def _call(ctx: Ctx, method: str, path: str) -> dict[str, Any]:
    url = f"{ctx.settings.gateway_url}{path}"
    headers = {"x-internal-token": ctx.common.internal_token}
    try:
        async with httpx.AsyncClient(timeout=_TIMEOUT_S) as client:
            r = await client.request(method, url, headers=headers)
    except httpx.HTTPError as exc:
        raise GatewayUnavailable(f"the gateway did not answer: {type(exc).__name__}") from None
    if r.status_code == 404:
        raise NotFound("the gateway knows no such channel (is its catalog up to date?)")
    if r.status_code != 200:
        raise GatewayUnavailable(f"the gateway answered {r.status_code}")
    out = r.json()
    if not isinstance(out, dict):
        raise GatewayUnavailable("the gateway sent an unexpected answer")
    return out


@get("/health", summary="Each channel's circuit-breaker state (closed/open/half-open), since when and why")
async def channels_health(ctx: CtxDep, admin: WhoDep) -> dict[str, Any]:
    return await _call(ctx, "GET", "/internal/channels/health")


@post("/{channel_id:str}/test", status_code=200,
      summary="Send one tiny request (max_tokens 1) through the channel: {ok, status, latency_ms, error}")
async def test_channel(ctx: CtxDep, admin: WhoDep, channel_id: FromPath[str]) -> dict[str, Any]:
    return await _call(ctx, "POST", f"/internal/channels/{channel_id}/test")


router = Router(
    "/api/admin/channels",
    route_handlers=[channels_health, test_channel],
    dependencies={"who": Provide(provide_principal), "admin": Provide(provide_admin)},
    tags=["admin"],
)
