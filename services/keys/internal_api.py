"""/internal/...: what gateways, billing and usage ask keys (X-Internal-Token required); the public models."""

from __future__ import annotations

import contextlib
from typing import Annotated

from litestar import Request, Router, get
from litestar.di import Provide
from litestar.params import PathParameter
from redis.exceptions import RedisError

from services.keys import accounts, apikeys, catalog_admin, snapshots
from services.keys.schemas import PublicModels, WhoAmI
from services.keys.web import CtxDep, require_internal
from shared import catalog as cat
from shared.events import KeySnapshot
from shared.web import NotFound

KeyHash = Annotated[str, PathParameter(pattern="^[0-9a-f]{64}$")]


@get("/keys/{key_hash:str}", summary="A key's snapshot by its secret's sha256 (refills Redis); 404 if none")
async def key_by_hash(internal: CtxDep, key_hash: KeyHash) -> KeySnapshot:
    snap = await apikeys.snapshot_by_hash(internal, key_hash)
    if snap is None:
        raise NotFound("no such key", code="invalid_api_key")
    return snap


@get("/catalog", summary="The catalog snapshot (refills Redis)")
async def catalog(internal: CtxDep) -> cat.Catalog:
    current = await catalog_admin.current(internal)
    with contextlib.suppress(RedisError):  # the answer matters more than the refill
        await snapshots.put_catalog(internal, current)
    return current


@get("/whoami", summary="The console user behind a session cookie value, sent as the X-Session header")
async def whoami(request: Request, internal: CtxDep) -> WhoAmI:  # type: ignore[type-arg]
    who = await accounts.resolve_session(internal, request.headers.get("x-session", ""))
    return WhoAmI(account_id=who.account_id, user_id=who.account_id, role=who.role, email=who.email)


router = Router("/internal", route_handlers=[key_by_hash, catalog, whoami],
                dependencies={"internal": Provide(require_internal)}, include_in_schema=False)


@get("/api/models", tags=["public"], summary="Models and prices for the pricing page (no login needed)")
async def public_models(ctx: CtxDep) -> PublicModels:
    return catalog_admin.public_models(await catalog_admin.current(ctx))
