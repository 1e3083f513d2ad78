"""/api/admin/...: user management and the catalog (admins only)."""

from __future__ import annotations

from typing import Annotated

from litestar import Router, delete, get, patch, post, put
from litestar.di import Provide
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_204_NO_CONTENT

from services.keys import accounts, catalog_admin
from services.keys.schemas import (
    AccountCreateIn,
    AccountOut,
    AccountPage,
    AccountPatch,
    CatalogFile,
    CatalogOut,
    ChannelIn,
    ChannelOut,
    ChannelPatch,
    DiscountIn,
    GroupIn,
    GroupOut,
    ModelIn,
)
from services.keys.web import CtxDep, WhoDep, provide_admin, provide_principal

PageLimit = Annotated[int, QueryParameter(ge=1, le=200)]
PageOffset = Annotated[int, QueryParameter(ge=0, le=1_000_000)]


@get("/users", summary="List or search accounts (q matches e-mail or id)")
async def list_users(ctx: CtxDep, admin: WhoDep, q: Annotated[str, QueryParameter(max_length=254)] = "",
                     status: Annotated[str, QueryParameter(pattern="^(|active|disabled)$")] = "",
                     role: Annotated[str, QueryParameter(pattern="^(|user|admin)$")] = "",
                     limit: PageLimit = 50, offset: PageOffset = 0) -> AccountPage:
    return await accounts.search(ctx, q, status, role, limit, offset)


@post("/users", status_code=201, summary="Create an account (no default key; the admin makes one if needed)")
async def create_user(ctx: CtxDep, admin: WhoDep, data: JSONBody[AccountCreateIn]) -> AccountOut:
    account, _, _ = await accounts.register(ctx, data.email, data.password, role=data.role, group=data.group,
                                            default_key=False)
    return accounts.account_out(account)


@get("/users/{account_id:str}")
async def get_user(ctx: CtxDep, admin: WhoDep, account_id: FromPath[str]) -> AccountOut:
    return await accounts.get_account(ctx, account_id)


@patch("/users/{account_id:str}", summary="Disable/enable, change group or role")
async def update_user(ctx: CtxDep, admin: WhoDep, account_id: FromPath[str],
                      data: JSONBody[AccountPatch]) -> AccountOut:
    return await accounts.update_account(ctx, admin, account_id, data)


@get("/catalog", summary="Channels (upstream keys masked), models, groups, discount")
async def get_catalog(ctx: CtxDep, admin: WhoDep) -> CatalogOut:
    return await catalog_admin.admin_view(ctx)


@post("/catalog/import", summary="Import a catalog file (same shape as catalog/default.json); idempotent")
async def import_catalog(ctx: CtxDep, admin: WhoDep, data: JSONBody[CatalogFile]) -> dict[str, int]:
    catalog = await catalog_admin.import_file(ctx, data)
    return {"version": catalog.version}


@put("/catalog/discount", summary="Platform-wide discount, parts per million off")
async def set_discount(ctx: CtxDep, admin: WhoDep, data: JSONBody[DiscountIn]) -> dict[str, int]:
    catalog = await catalog_admin.set_discount(ctx, data.discount_ppm)
    return {"version": catalog.version, "discount_ppm": catalog.discount_ppm}


@post("/channels", status_code=201)
async def create_channel(ctx: CtxDep, admin: WhoDep, data: JSONBody[ChannelIn]) -> ChannelOut:
    return await catalog_admin.create_channel(ctx, data)


@patch("/channels/{channel_id:str}")
async def update_channel(ctx: CtxDep, admin: WhoDep, channel_id: FromPath[str],
                         data: JSONBody[ChannelPatch]) -> ChannelOut:
    return await catalog_admin.update_channel(ctx, channel_id, data)


@delete("/channels/{channel_id:str}", status_code=HTTP_204_NO_CONTENT)
async def delete_channel(ctx: CtxDep, admin: WhoDep, channel_id: FromPath[str]) -> None:
    await catalog_admin.delete_channel(ctx, channel_id)


@put("/models", summary="Create or replace a model (by name)")
async def put_model(ctx: CtxDep, admin: WhoDep, data: JSONBody[ModelIn]) -> ModelIn:
    return await catalog_admin.put_model(ctx, data)


@delete("/models/{name:path}", status_code=HTTP_204_NO_CONTENT)
async def delete_model(ctx: CtxDep, admin: WhoDep, name: FromPath[str]) -> None:
    await catalog_admin.delete_model(ctx, name.lstrip("/"))


@put("/groups", summary="Create or replace a group (by name)")
async def put_group(ctx: CtxDep, admin: WhoDep, data: JSONBody[GroupIn]) -> GroupOut:
    return await catalog_admin.put_group(ctx, data)


@delete("/groups/{name:str}", status_code=HTTP_204_NO_CONTENT)
async def delete_group(ctx: CtxDep, admin: WhoDep, name: FromPath[str]) -> None:
    await catalog_admin.delete_group(ctx, name)


router = Router(
    "/api/admin",
    route_handlers=[list_users, create_user, get_user, update_user, get_catalog, import_catalog, set_discount,
                    create_channel, update_channel, delete_channel, put_model, delete_model, put_group,
                    delete_group],
    dependencies={"who": Provide(provide_principal), "admin": Provide(provide_admin)},
    tags=["admin"],
)
