"""The demo seed `faregate dev` uses, the `faregate keys ...` commands, and the service as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis

from services.keys import seed
from services.keys.context import Ctx
from shared.config import CommonSettings
from shared.crypto import hash_api_key, unseal
from tests import procs


async def test_seed_demo_is_idempotent_and_reuses_the_saved_key(ctx: Ctx, common: CommonSettings) -> None:
    first = await seed.seed_with(ctx, "http://127.0.0.1:9999")
    key_file = Path(common.data_dir) / "demo-key"
    assert key_file.read_text().strip() == first.api_key and (key_file.stat().st_mode & 0o777) == 0o600
    second = await seed.seed_with(ctx, "http://127.0.0.1:9999")
    assert second == first

    async with ctx.pool.acquire() as conn:
        mock = await conn.fetchrow("SELECT * FROM keys.channels WHERE id = 'mock'")
        chat_and_embed = {r["name"] for r in await conn.fetch(
            "SELECT name FROM keys.models WHERE kind IN ('chat', 'embedding')")}
        row = await conn.fetchrow("SELECT status FROM keys.api_keys WHERE key_hash = $1",
                                  hash_api_key(first.api_key))
    assert mock["base_url"] == "http://127.0.0.1:9999/v1" and mock["provider"] == "openai"
    assert mock["status"] == "enabled" and set(mock["models"]) == chat_and_embed
    assert unseal(mock["api_keys_enc"][0], common.secret_key) == seed.MOCK_UPSTREAM_KEY
    assert row["status"] == "active"

    # The saved key deleted: a rerun makes a new one for the same account.
    async with ctx.pool.acquire() as conn:
        await conn.execute("UPDATE keys.api_keys SET status = 'deleted' WHERE key_hash = $1",
                           hash_api_key(first.api_key))
    third = await seed.seed_with(ctx, "http://127.0.0.1:9999")
    assert third.account_id == first.account_id and third.api_key != first.api_key
    assert key_file.read_text().strip() == third.api_key


def faregate(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faregate.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, check=False)


async def test_create_admin_and_import_catalog_commands(common: CommonSettings) -> None:
    made = faregate("keys", "create-admin", "--email", "ops@example.com", stdin="an admin password\n")
    assert made.returncode == 0, made.stderr
    assert "created" in made.stdout
    again = faregate("keys", "create-admin", "--email", "ops@example.com", stdin="an admin password\n")
    assert again.returncode == 0 and "promoted existing" in again.stdout
    weak = faregate("keys", "create-admin", "--email", "weak@example.com", stdin="short\n")
    assert weak.returncode != 0 and "password" in weak.stderr

    first = faregate("keys", "import-catalog", "services/keys/catalog/default.json")
    assert first.returncode == 0, first.stderr
    second = faregate("keys", "import-catalog")
    assert second.returncode == 0 and second.stdout == first.stdout  # same version: nothing changed

    conn = await asyncpg.connect(common.database_url)
    try:
        role = await conn.fetchval("SELECT role FROM keys.accounts WHERE email_norm = 'ops@example.com'")
        models = await conn.fetchval("SELECT count(*) FROM keys.models")
        live_keys = await conn.fetch("SELECT key_hash FROM keys.api_keys WHERE status <> 'deleted'")
    finally:
        await conn.close()
    assert role == "admin" and models >= 17

    # Redis lost everything: `republish` puts every key snapshot and the catalog back.
    r = aioredis.Redis.from_url(common.redis_url)
    try:
        for row in live_keys:
            await r.delete(f"{common.namespace}:key:{row['key_hash']}")
        await r.delete(f"{common.namespace}:catalog")
        done = faregate("keys", "republish")
        assert done.returncode == 0, done.stderr
        assert f"{len(live_keys)} key snapshot(s)" in done.stdout
        for row in live_keys:
            assert await r.exists(f"{common.namespace}:key:{row['key_hash']}")
        assert await r.exists(f"{common.namespace}:catalog")
    finally:
        await r.aclose()


def test_the_service_runs_as_a_process_with_ops_endpoints_and_openapi() -> None:
    # Two workers start at once, each making sure the configured first admin exists.
    env = {"FAREGATE_KEYS_WORKERS": "2", "FAREGATE_KEYS_ADMIN_EMAIL": "boot@example.com",
           "FAREGATE_KEYS_ADMIN_PASSWORD": "boot-admin-password"}
    with procs.running("keys", env, ready_path="/readyz") as sp:
        who = httpx.post(sp.url + "/api/auth/login",
                         json={"email": "boot@example.com", "password": "boot-admin-password"})
        assert who.status_code == 200 and who.json()["account"]["role"] == "admin"
        assert httpx.get(sp.url + "/healthz").json() == {"status": "ok"}
        ready = httpx.get(sp.url + "/readyz").json()
        assert ready["checks"] == {"postgres": "ok", "redis": "ok", "nats": "ok"}
        # With several workers the metrics come from prometheus-client's multiprocess files (shared/web.py).
        assert httpx.get(sp.url + "/metrics").status_code == 200
        schema = httpx.get(sp.url + "/schema/openapi.json")
        assert schema.status_code == 200 and "/api/keys" in schema.json()["paths"]
        r = httpx.post(sp.url + "/api/auth/login", json={"email": "nobody@example.com", "password": "x"})
        assert r.status_code == 401 and r.headers["x-request-id"]
    assert sp.proc.returncode == 0, sp.log()[-2000:]  # stopped cleanly on SIGTERM
