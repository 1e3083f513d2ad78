"""The catalog as keys owns it: tables → the `shared.catalog.Catalog` snapshot, edits, and file import.

Every edit runs in one transaction that locks `catalog_state`, compares the snapshot before and after, and
bumps the version only when something really changed (so re-importing the same file is a no-op); after the
commit the snapshot goes to Redis and `catalog.changed` is published.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import msgspec

from services.keys import repo, snapshots
from services.keys.context import Ctx
from services.keys.errors import InvalidInput
from services.keys.schemas import (
    CatalogFile,
    CatalogOut,
    ChannelIn,
    ChannelOut,
    ChannelPatch,
    GroupIn,
    GroupOut,
    ModelIn,
    PriceIn,
    PublicModel,
    PublicModels,
)
from shared import catalog as cat
from shared.crypto import seal
from shared.events import ModelPrice
from shared.web import Conflict, NotFound

T = TypeVar("T")

DEFAULT_FILE = Path(__file__).with_name("catalog") / "default.json"
_json = msgspec.json.Encoder()


def mask_secret(secret: str) -> str:
    """Enough to tell two upstream keys apart, too little to use one."""
    if len(secret) < 16:
        return "…" + secret[-2:]
    return secret[:3] + "…" + secret[-4:]


# --- reading ------------------------------------------------------------------------------------------------


def _price(input_: int | None, output: int | None, cached: int | None) -> ModelPrice | None:
    if input_ is None or output is None:
        return None
    return ModelPrice(input=input_, output=output, cached_input=cached or 0)


def _channel(row: Any) -> cat.Channel:
    return cat.Channel(
        id=row["id"], name=row["name"], provider=row["provider"], base_url=row["base_url"],
        api_keys_enc=tuple(row["api_keys_enc"]), models=tuple(row["models"]),
        model_map=msgspec.json.decode(row["model_map"], type=dict[str, str]), priority=row["priority"],
        weight=row["weight"], groups=tuple(row["groups"]), status=row["status"],
        cost_ratio_ppm=row["cost_ratio_ppm"],
    )


def _model(row: Any) -> cat.Model:
    price = _price(row["price_input"], row["price_output"], row["price_cached_input"])
    assert price is not None
    return cat.Model(
        name=row["name"], provider=row["provider"], kind=row["kind"], context_window=row["context_window"],
        max_output=row["max_output"], price=price,
        list_price=_price(row["list_input"], row["list_output"], row["list_cached_input"]),
        fallbacks=tuple(row["fallbacks"]), image_price_micros=row["image_price_micros"],
    )


async def load(conn: asyncpg.Connection) -> cat.Catalog:
    state = await conn.fetchrow(repo.CATALOG_STATE)
    channels = [_channel(r) for r in await conn.fetch(repo.ALL_CHANNELS)]
    models = [_model(r) for r in await conn.fetch(repo.ALL_MODELS)]
    groups = [cat.Group(name=r["name"], ratio_ppm=r["ratio_ppm"], models=tuple(r["models"]))
              for r in await conn.fetch(repo.ALL_GROUPS)]
    return cat.Catalog(version=state["version"], discount_ppm=state["discount_ppm"], channels=tuple(channels),
                       models=tuple(models), groups=tuple(groups))


def _channel_out(row: Any) -> ChannelOut:
    return ChannelOut(
        id=row["id"], name=row["name"], provider=row["provider"], base_url=row["base_url"],
        api_keys=list(row["api_keys_mask"]), models=list(row["models"]),
        model_map=msgspec.json.decode(row["model_map"], type=dict[str, str]), priority=row["priority"],
        weight=row["weight"], groups=list(row["groups"]), status=row["status"],
        cost_ratio_ppm=row["cost_ratio_ppm"],
    )


def _model_in(m: cat.Model) -> ModelIn:
    lp = m.list_price
    return ModelIn(
        name=m.name, provider=m.provider, kind=m.kind, context_window=m.context_window,
        max_output=m.max_output,
        price=PriceIn(input=m.price.input, output=m.price.output, cached_input=m.price.cached_input),
        list_price=None if lp is None
        else PriceIn(input=lp.input, output=lp.output, cached_input=lp.cached_input),
        fallbacks=list(m.fallbacks), image_price_micros=m.image_price_micros,
    )


def _group_out(row: Any) -> GroupOut:
    return GroupOut(name=row["name"], ratio_ppm=row["ratio_ppm"], models=list(row["models"]),
                    selectable=row["selectable"])


async def admin_view(ctx: Ctx) -> CatalogOut:
    async with ctx.pool.acquire() as conn:
        state = await conn.fetchrow(repo.CATALOG_STATE)
        channels = [_channel_out(r) for r in await conn.fetch(repo.ALL_CHANNELS)]
        models = [_model_in(_model(r)) for r in await conn.fetch(repo.ALL_MODELS)]
        groups = [_group_out(r) for r in await conn.fetch(repo.ALL_GROUPS)]
    return CatalogOut(version=state["version"], discount_ppm=state["discount_ppm"], channels=channels,
                      models=models, groups=groups)


def _discounted(price: ModelPrice, discount_ppm: int) -> ModelPrice:
    # Exact integer arithmetic, rounded half up, like shared.pricing.
    def off(v: int) -> int:
        return (v * (cat.PPM - discount_ppm) + cat.PPM // 2) // cat.PPM

    return ModelPrice(input=off(price.input), output=off(price.output), cached_input=off(price.cached_input))


def public_models(catalog: cat.Catalog) -> PublicModels:
    served = {m for ch in catalog.channels if ch.status == "enabled" and ch.api_keys_enc for m in ch.models}
    return PublicModels(
        version=catalog.version,
        discount_ppm=catalog.discount_ppm,
        models=[
            PublicModel(name=m.name, provider=m.provider, kind=m.kind, context_window=m.context_window,
                        max_output=m.max_output, price=_discounted(m.price, catalog.discount_ppm),
                        list_price=m.list_price, image_price_micros=m.image_price_micros,
                        available=m.name in served)
            for m in catalog.models
        ],
    )


async def current(ctx: Ctx) -> cat.Catalog:
    async with ctx.pool.acquire() as conn:
        return await load(conn)


# --- editing ------------------------------------------------------------------------------------------------


async def edit(ctx: Ctx, change: Callable[[asyncpg.Connection], Awaitable[T]]) -> tuple[T, cat.Catalog]:
    """Apply `change` in one transaction; bump the version if the snapshot changed; then publish it."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        await conn.fetchrow(repo.CATALOG_STATE_FOR_UPDATE)  # edits queue up here, so versions are ordered
        before = await load(conn)
        result = await change(conn)
        after = await load(conn)
        changed = msgspec.structs.replace(after, version=0) != msgspec.structs.replace(before, version=0)
        if changed:
            version = await conn.fetchval(repo.BUMP_CATALOG_VERSION)
            after = msgspec.structs.replace(after, version=version)
    await snapshots.publish_catalog(ctx, after, announce=changed)
    return result, after


def _check_channel_models(models: list[str], model_map: dict[str, str]) -> None:
    stray = sorted(set(model_map) - set(models))
    if stray:
        raise InvalidInput({"model_map": f"maps models the channel does not serve: {', '.join(stray[:5])}"})


async def _known_models(conn: asyncpg.Connection, names: list[str], field: str) -> None:
    known = {r["name"] for r in await conn.fetch(repo.ALL_MODELS)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidInput({field: f"unknown model(s): {', '.join(unknown[:5])}"})


async def create_channel(ctx: Ctx, data: ChannelIn) -> ChannelOut:
    _check_channel_models(data.models, data.model_map)
    channel_id = data.id or "ch_" + secrets.token_hex(6)

    async def change(conn: asyncpg.Connection) -> ChannelOut:
        if await conn.fetchrow(repo.CHANNEL_BY_ID, channel_id):
            raise Conflict(f"channel {channel_id} exists", field="id")
        await _known_models(conn, data.models, "models")
        await conn.execute(
            repo.UPSERT_CHANNEL, channel_id, data.name, data.provider, data.base_url.rstrip("/"),
            [seal(k, ctx.common.secret_key) for k in data.api_keys], [mask_secret(k) for k in data.api_keys],
            data.models, _json.encode(data.model_map).decode(), data.priority, data.weight, data.groups,
            data.status, data.cost_ratio_ppm,
        )
        return _channel_out(await conn.fetchrow(repo.CHANNEL_BY_ID, channel_id))

    out, _ = await edit(ctx, change)
    return out


async def update_channel(ctx: Ctx, channel_id: str, patch: ChannelPatch) -> ChannelOut:
    async def change(conn: asyncpg.Connection) -> ChannelOut:
        row = await conn.fetchrow(repo.CHANNEL_BY_ID_FOR_UPDATE, channel_id)
        if row is None:
            raise NotFound(f"no channel {channel_id}")
        cur = _channel_out(row)
        enc, mask = list(row["api_keys_enc"]), list(row["api_keys_mask"])
        if patch.api_keys is not msgspec.UNSET:
            enc = [seal(k, ctx.common.secret_key) for k in patch.api_keys]
            mask = [mask_secret(k) for k in patch.api_keys]
        if patch.add_api_keys is not msgspec.UNSET:
            enc += [seal(k, ctx.common.secret_key) for k in patch.add_api_keys]
            mask += [mask_secret(k) for k in patch.add_api_keys]
        if len(enc) > 64:
            raise InvalidInput({"api_keys": "at most 64 upstream keys per channel"})

        def pick(value: Any, old: Any) -> Any:
            return old if value is msgspec.UNSET else value

        models = pick(patch.models, cur.models)
        model_map = pick(patch.model_map, cur.model_map)
        _check_channel_models(models, model_map)
        if patch.models is not msgspec.UNSET:
            await _known_models(conn, models, "models")
        base_url = pick(patch.base_url, cur.base_url).rstrip("/")
        await conn.execute(
            repo.UPSERT_CHANNEL, channel_id, pick(patch.name, cur.name), pick(patch.provider, cur.provider),
            base_url, enc, mask, models, _json.encode(model_map).decode(), pick(patch.priority, cur.priority),
            pick(patch.weight, cur.weight), pick(patch.groups, cur.groups), pick(patch.status, cur.status),
            pick(patch.cost_ratio_ppm, cur.cost_ratio_ppm),
        )
        return _channel_out(await conn.fetchrow(repo.CHANNEL_BY_ID, channel_id))

    out, _ = await edit(ctx, change)
    return out


async def delete_channel(ctx: Ctx, channel_id: str) -> None:
    async def change(conn: asyncpg.Connection) -> None:
        if await conn.execute(repo.DELETE_CHANNEL, channel_id) == "DELETE 0":
            raise NotFound(f"no channel {channel_id}")

    await edit(ctx, change)


async def _upsert_model(conn: asyncpg.Connection, m: ModelIn) -> None:
    lp = m.list_price
    await conn.execute(
        repo.UPSERT_MODEL, m.name, m.provider, m.kind, m.context_window, m.max_output, m.price.input,
        m.price.output, m.price.cached_input, lp.input if lp else None, lp.output if lp else None,
        lp.cached_input if lp else None, m.fallbacks, m.image_price_micros,
    )


async def put_model(ctx: Ctx, data: ModelIn) -> ModelIn:
    if data.name in data.fallbacks:
        raise InvalidInput({"fallbacks": "a model cannot fall back to itself"})

    async def change(conn: asyncpg.Connection) -> ModelIn:
        await _upsert_model(conn, data)
        await _known_models(conn, data.fallbacks, "fallbacks")
        return _model_in(_model(await conn.fetchrow(repo.MODEL_BY_NAME, data.name)))

    out, _ = await edit(ctx, change)
    return out


async def delete_model(ctx: Ctx, name: str) -> None:
    async def change(conn: asyncpg.Connection) -> None:
        if await conn.execute(repo.DELETE_MODEL, name) == "DELETE 0":
            raise NotFound(f"no model {name}")

    await edit(ctx, change)


async def put_group(ctx: Ctx, data: GroupIn) -> GroupOut:
    async def change(conn: asyncpg.Connection) -> GroupOut:
        await _known_models(conn, data.models, "models")
        await conn.execute(repo.UPSERT_GROUP, data.name, data.ratio_ppm, data.models, data.selectable)
        return _group_out(await conn.fetchrow(repo.GROUP_BY_NAME, data.name))

    out, _ = await edit(ctx, change)
    return out


async def delete_group(ctx: Ctx, name: str) -> None:
    if name == "default":
        raise Conflict("the default group cannot be deleted")

    async def change(conn: asyncpg.Connection) -> None:
        if await conn.fetchval(repo.GROUP_IN_USE, name):
            raise Conflict(f"group {name} is still used by accounts or keys")
        if await conn.execute(repo.DELETE_GROUP, name) == "DELETE 0":
            raise NotFound(f"no group {name}")

    await edit(ctx, change)


async def set_discount(ctx: Ctx, discount_ppm: int) -> cat.Catalog:
    async def change(conn: asyncpg.Connection) -> None:
        await conn.execute(repo.SET_DISCOUNT, discount_ppm)

    _, after = await edit(ctx, change)
    return after


# --- import -------------------------------------------------------------------------------------------------


def parse_file(raw: bytes) -> CatalogFile:
    try:
        return msgspec.json.decode(raw, type=CatalogFile)
    except msgspec.ValidationError as exc:
        raise InvalidInput({"file": str(exc)}) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput({"file": f"not JSON: {exc}"}) from None


async def import_file(ctx: Ctx, data: CatalogFile) -> cat.Catalog:
    """Models and groups from the file replace those of the same name; channels are added if absent (an
    existing one keeps its upstream keys and status). Importing the same file twice changes nothing the second
    time."""

    async def change(conn: asyncpg.Connection) -> None:
        for m in data.models:
            await _upsert_model(conn, m)
        names = {m.name for m in data.models} | {r["name"] for r in await conn.fetch(repo.ALL_MODELS)}
        for m in data.models:
            missing = [f for f in m.fallbacks if f not in names]
            if missing:
                raise InvalidInput({f"models.{m.name}.fallbacks": f"unknown model(s): {', '.join(missing)}"})
        for g in data.groups:
            await conn.execute(repo.UPSERT_GROUP, g.name, g.ratio_ppm, g.models, g.selectable)
        for ch in data.channels:
            _check_channel_models(ch.models, ch.model_map)
            await conn.execute(
                repo.INSERT_CHANNEL_IF_ABSENT, ch.id, ch.name, ch.provider, ch.base_url.rstrip("/"), [], [],
                ch.models, _json.encode(ch.model_map).decode(), ch.priority, ch.weight, ch.groups, "disabled",
                ch.cost_ratio_ppm,
            )
        if data.discount_ppm is not None:
            await conn.execute(repo.SET_DISCOUNT, data.discount_ppm)

    _, after = await edit(ctx, change)
    return after


async def ensure_channel(ctx: Ctx, data: ChannelIn) -> None:
    """Create or overwrite a channel by id (the demo seed's mock channel)."""
    assert data.id is not None

    async def change(conn: asyncpg.Connection) -> None:
        row = await conn.fetchrow(repo.CHANNEL_BY_ID_FOR_UPDATE, data.id)
        if row is not None and list(row["api_keys_mask"]) == [mask_secret(k) for k in data.api_keys]:
            enc = list(row["api_keys_enc"])  # same keys: keep the sealed form, so a rerun changes nothing
        else:
            enc = [seal(k, ctx.common.secret_key) for k in data.api_keys]
        await conn.execute(
            repo.UPSERT_CHANNEL, data.id, data.name, data.provider, data.base_url.rstrip("/"), enc,
            [mask_secret(k) for k in data.api_keys], data.models, _json.encode(data.model_map).decode(),
            data.priority, data.weight, data.groups, data.status, data.cost_ratio_ppm,
        )

    await edit(ctx, change)


async def ensure_published(ctx: Ctx) -> cat.Catalog:
    """Write the current catalog to Redis (replacing whatever is there) and tell the gateways."""
    catalog = await current(ctx)
    await snapshots.publish_catalog(ctx, catalog, force=True)
    return catalog
