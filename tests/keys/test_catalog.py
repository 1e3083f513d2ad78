"""The catalog: file import, admin edits of channels/models/groups/discount, the snapshot gateways read from
Redis, catalog.changed on every edit, and the public pricing data."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.keys.catalog_admin import DEFAULT_FILE
from shared import catalog as cat
from shared import events as ev
from shared.config import CommonSettings
from shared.crypto import unseal
from tests.keys.conftest import Tap, User

UPSTREAM_SECRET = "sk-upstream-THIS-MUST-STAY-SEALED-0123456789"


async def catalog_in_redis(common: CommonSettings) -> cat.Catalog:
    r = aioredis.Redis.from_url(common.redis_url)
    try:
        raw = await r.get(f"{common.namespace}:catalog")
    finally:
        await r.aclose()
    assert raw is not None
    return cat.decode(raw)


def test_the_default_catalog_names_the_mainstream_models_with_real_prices() -> None:
    data = json.loads(DEFAULT_FILE.read_text())
    names = {m["name"] for m in data["models"]}
    for expected in ("deepseek-chat", "deepseek-reasoner", "qwen-max", "qwen-plus", "qwen-turbo", "glm-4",
                     "glm-4-flash", "kimi-k2", "doubao-pro", "gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5",
                     "claude-haiku-4-5", "gemini-2.5-pro", "gemini-2.5-flash"):
        assert expected in names
    kinds = [m["kind"] for m in data["models"]]
    assert kinds.count("embedding") >= 1 and kinds.count("image") >= 1
    prices = {m["name"]: m["price"] for m in data["models"]}
    assert prices["gpt-4o"] == {"input": 2_500_000, "output": 10_000_000, "cached_input": 1_250_000}
    assert all(isinstance(v, int) for p in prices.values() for v in p.values())
    urls = {c["id"]: c["base_url"] for c in data["channels"]}
    assert urls["deepseek"] == "https://api.deepseek.com/v1" and urls["anthropic"] == "https://api.anthropic.com"
    served = {m for c in data["channels"] for m in c["models"]}
    assert served == names  # every model has a provider to call


async def test_import_is_idempotent_and_publishes_the_snapshot(admin: User, common: CommonSettings,
                                                               tap: Tap) -> None:
    raw = DEFAULT_FILE.read_bytes()
    headers = {"Content-Type": "application/json"}
    first = await admin.post("/api/admin/catalog/import", content=raw, headers=headers)
    assert first.status_code == 201, first.text
    snap = await catalog_in_redis(common)
    assert snap.version == first.json()["version"] and len(snap.models) >= 17
    assert {c.id for c in snap.channels} >= {"deepseek", "openai", "anthropic", "gemini"}
    assert all(c.status == "disabled" and not c.api_keys_enc for c in snap.channels if c.id == "deepseek")

    # An operator changes a price; importing the file again restores it, as a new version, published.
    gpt4o = next(m for m in (await admin.get("/api/admin/catalog")).json()["models"] if m["name"] == "gpt-4o")
    edited = await admin.put("/api/admin/models", json={**gpt4o, "price": {"input": 1, "output": 2}})
    assert edited.status_code == 200
    edited_version = (await catalog_in_redis(common)).version
    assert edited_version == first.json()["version"] + 1
    restored = await admin.post("/api/admin/catalog/import", content=raw, headers=headers)
    version = restored.json()["version"]
    assert version == edited_version + 1
    snap = await catalog_in_redis(common)
    assert snap.version == version
    assert next(m for m in snap.models if m.name == "gpt-4o").price.input == 2_500_000
    await tap.wait_for(lambda e: isinstance(e, ev.CatalogChanged) and e.version == version)

    again = await admin.post("/api/admin/catalog/import", content=raw, headers=headers)
    assert again.json()["version"] == version  # nothing changed, nothing bumped
    assert (await catalog_in_redis(common)).version == version


async def test_channel_upstream_keys_are_sealed_and_never_returned(admin: User, common: CommonSettings,
                                                                   catalog_loaded: Any, tap: Tap) -> None:
    r = await admin.post("/api/admin/channels", json={
        "name": "DeepSeek direct", "provider": "openai", "base_url": "https://api.deepseek.com/v1/",
        "api_keys": [UPSTREAM_SECRET], "models": ["deepseek-chat"],
        "model_map": {"deepseek-chat": "deepseek-v3"},
        "priority": 5, "weight": 3, "groups": ["default"], "cost_ratio_ppm": 800_000,
    })
    assert r.status_code == 201, r.text
    channel = r.json()
    assert UPSTREAM_SECRET not in r.text and channel["api_keys"] == ["sk-…6789"]
    assert channel["base_url"] == "https://api.deepseek.com/v1"

    view = await admin.get("/api/admin/catalog")
    assert UPSTREAM_SECRET not in view.text
    conn = await asyncpg.connect(common.database_url)
    try:
        rows = await conn.fetch("SELECT row_to_json(c)::text FROM keys.channels c")
        dump = "\n".join(str(r[0]) for r in rows)
    finally:
        await conn.close()
    assert UPSTREAM_SECRET not in dump

    snap = await catalog_in_redis(common)
    mine = next(c for c in snap.channels if c.id == channel["id"])
    assert unseal(mine.api_keys_enc[0], common.secret_key) == UPSTREAM_SECRET  # only the gateway can open it
    assert mine.model_map == {"deepseek-chat": "deepseek-v3"} and mine.cost_ratio_ppm == 800_000
    await tap.wait_for(lambda e: isinstance(e, ev.CatalogChanged) and e.version == snap.version)

    r = await admin.patch(f"/api/admin/channels/{channel['id']}",
                          json={"add_api_keys": ["sk-second-key-abcdefgh"], "status": "disabled"})
    assert r.status_code == 200 and r.json()["api_keys"] == ["sk-…6789", "sk-…efgh"]
    assert r.json()["status"] == "disabled"
    after = await catalog_in_redis(common)
    assert after.version == snap.version + 1

    bad = await admin.post("/api/admin/channels", json={"name": "x", "provider": "cohere",
                                                        "base_url": "ftp://nope"})
    assert bad.status_code == 400 and {"provider"} <= set(bad.json()["error"]["fields"])
    unmapped = await admin.post("/api/admin/channels", json={
        "name": "x", "provider": "openai", "base_url": "https://example.com/v1", "models": ["gpt-4o"],
        "model_map": {"claude-haiku-4-5": "y"}})
    assert unmapped.status_code == 400 and "model_map" in unmapped.json()["error"]["fields"]
    assert (await admin.delete(f"/api/admin/channels/{channel['id']}")).status_code == 204
    assert channel["id"] not in {c.id for c in (await catalog_in_redis(common)).channels}
    assert (await admin.delete(f"/api/admin/channels/{channel['id']}")).status_code == 404


async def test_models_groups_and_discount(admin: User, common: CommonSettings, catalog_loaded: Any,
                                          client: AsyncTestClient[Litestar]) -> None:
    model = {"name": "acme-large", "provider": "acme", "kind": "chat", "context_window": 64_000,
             "max_output": 4_096, "price": {"input": 1_000_000, "output": 2_000_000, "cached_input": 100_000},
             "fallbacks": ["gpt-4o-mini"]}
    r = await admin.put("/api/admin/models", json=model)
    assert r.status_code == 200, r.text
    snap = await catalog_in_redis(common)
    acme = next(m for m in snap.models if m.name == "acme-large")
    assert acme.price.cached_input == 100_000 and acme.fallbacks == ("gpt-4o-mini",)
    assert (await admin.put("/api/admin/models", json={**model, "fallbacks": ["nope"]})).status_code == 400
    assert (await admin.put("/api/admin/models", json={**model, "price": {"input": -1, "output": 0}})
            ).status_code == 400

    r = await admin.put("/api/admin/groups", json={"name": "team", "ratio_ppm": 1_200_000,
                                                   "models": ["acme-large"], "selectable": True})
    assert r.status_code == 200
    team = next(g for g in (await catalog_in_redis(common)).groups if g.name == "team")
    assert team.ratio_ppm == 1_200_000 and team.models == ("acme-large",)

    r = await admin.put("/api/admin/catalog/discount", json={"discount_ppm": 100_000})
    assert r.status_code == 200 and (await catalog_in_redis(common)).discount_ppm == 100_000
    public = (await client.get("/api/models")).json()  # no login needed
    acme_public = next(m for m in public["models"] if m["name"] == "acme-large")
    assert acme_public["price"] == {"input": 900_000, "output": 1_800_000, "cached_input": 90_000}
    assert acme_public["available"] is False  # no enabled channel with keys serves it
    await admin.put("/api/admin/catalog/discount", json={"discount_ppm": 0})

    assert (await admin.delete("/api/admin/groups/default")).status_code == 409
    assert (await admin.delete("/api/admin/groups/team")).status_code == 204
    assert (await admin.delete("/api/admin/models/acme-large")).status_code == 204
    assert "acme-large" not in {m.name for m in (await catalog_in_redis(common)).models}


async def test_internal_catalog_matches_redis_and_needs_the_token(client: AsyncTestClient[Litestar],
                                                                  common: CommonSettings,
                                                                  catalog_loaded: Any) -> None:
    assert (await client.get("/internal/catalog")).status_code == 401
    r = await client.get("/internal/catalog", headers={"X-Internal-Token": common.internal_token})
    assert r.status_code == 200
    served = msgspec.json.decode(r.content, type=cat.Catalog)
    assert served == await catalog_in_redis(common)
