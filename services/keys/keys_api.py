"""/api/keys/...: a person's API keys (an admin's view covers every account)."""

from __future__ import annotations

from typing import Annotated

from litestar import Router, delete, get, patch, post
from litestar.di import Provide
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_204_NO_CONTENT

from services.keys import apikeys
from services.keys.schemas import KeyCreateIn, KeyOut, KeyPage, KeyPatch, KeyWithSecret, RotateIn
from services.keys.web import CtxDep, WhoDep, provide_principal

PageLimit = Annotated[int, QueryParameter(ge=1, le=200)]
PageOffset = Annotated[int, QueryParameter(ge=0, le=1_000_000)]
Search = Annotated[str, QueryParameter(max_length=100)]


@get("/", summary="List keys (yours; admins: all=true or account_id=...)")
async def list_keys(ctx: CtxDep, who: WhoDep, all: FromQuery[bool] = False,
                    account_id: FromQuery[str | None] = None, q: Search = "",
                    limit: PageLimit = 50, offset: PageOffset = 0) -> KeyPage:
    return await apikeys.list_keys(ctx, who, everyone=all, account_id=account_id, q=q, limit=limit,
                                   offset=offset)


@post("/", status_code=201, summary="Create a key; the secret is in this answer and nowhere else, ever")
async def create_key(ctx: CtxDep, who: WhoDep, data: JSONBody[KeyCreateIn],
                     account_id: FromQuery[str | None] = None
                     ) -> KeyWithSecret:
    key, secret = await apikeys.create_key(ctx, who, data, account_id=account_id)
    return KeyWithSecret(key=key, secret=secret)


@get("/{key_id:str}")
async def get_key(ctx: CtxDep, who: WhoDep, key_id: FromPath[str]) -> KeyOut:
    return await apikeys.get_key(ctx, who, key_id)


@patch("/{key_id:str}", summary="Rename, regroup, enable/disable, change limits, lists or expiry")
async def update_key(ctx: CtxDep, who: WhoDep, key_id: FromPath[str], data: JSONBody[KeyPatch]) -> KeyOut:
    return await apikeys.update_key(ctx, who, key_id, data)


@post("/{key_id:str}/disable", status_code=200)
async def disable_key(ctx: CtxDep, who: WhoDep, key_id: FromPath[str]) -> KeyOut:
    return await apikeys.update_key(ctx, who, key_id, KeyPatch(status="disabled"))


@post("/{key_id:str}/enable", status_code=200)
async def enable_key(ctx: CtxDep, who: WhoDep, key_id: FromPath[str]) -> KeyOut:
    return await apikeys.update_key(ctx, who, key_id, KeyPatch(status="active"))


@delete("/{key_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete a key (irreversible)")
async def delete_key(ctx: CtxDep, who: WhoDep, key_id: FromPath[str]) -> None:
    await apikeys.delete_key(ctx, who, key_id)


@post("/{key_id:str}/rotate", status_code=200,
      summary="New secret, same settings; the old one works for grace_seconds more")
async def rotate_key(ctx: CtxDep, who: WhoDep, key_id: FromPath[str], data: JSONBody[RotateIn]
                     ) -> KeyWithSecret:
    key, secret = await apikeys.rotate_key(ctx, who, key_id, data.grace_seconds)
    return KeyWithSecret(key=key, secret=secret)


router = Router("/api/keys", route_handlers=[list_keys, create_key, get_key, update_key, disable_key,
                                            enable_key, delete_key, rotate_key],
                dependencies={"who": Provide(provide_principal)}, tags=["keys"])
