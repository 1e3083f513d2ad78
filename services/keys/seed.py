"""The demo data `faregate dev` prints: a demo account and API key, the default catalog, and a channel "mock"
pointing at the mock upstream for every chat and embedding model. Idempotent: a rerun reuses the key saved in
`<data_dir>/demo-key` while its hash still exists."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.keys import accounts, apikeys, catalog_admin, repo
from services.keys.config import KeysSettings
from services.keys.context import Ctx, Principal
from services.keys.schemas import ChannelIn, KeyCreateIn
from shared import config
from shared.config import CommonSettings
from shared.crypto import hash_api_key
from shared.runtime import open_resources

DEMO_EMAIL = "demo@faregate.example"
DEMO_PASSWORD = "faregate-demo"  # noqa: S105 (printed by `faregate dev`; a local demo only)
MOCK_UPSTREAM_KEY = "sk-mock-upstream-placeholder"


@dataclass(frozen=True)
class Demo:
    account_id: str
    api_key: str
    email: str
    password: str


def _save_key(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")


async def seed_catalog(ctx: Ctx, upstream_base_url: str) -> None:
    await catalog_admin.import_file(ctx, catalog_admin.parse_file(catalog_admin.DEFAULT_FILE.read_bytes()))
    catalog = await catalog_admin.current(ctx)
    served = [m.name for m in catalog.models if m.kind in ("chat", "embedding")]
    await catalog_admin.ensure_channel(ctx, ChannelIn(
        id="mock", name="Mock upstream (demo)", provider="openai",
        base_url=upstream_base_url.rstrip("/") + "/v1",
        api_keys=[MOCK_UPSTREAM_KEY], models=served, priority=100, weight=1, status="enabled",
    ))


async def seed_with(ctx: Ctx, upstream_base_url: str) -> Demo:
    await seed_catalog(ctx, upstream_base_url)
    key_file = Path(ctx.common.data_dir) / "demo-key"
    norm = accounts.normalize_email(DEMO_EMAIL)
    async with ctx.pool.acquire() as conn:
        account = await conn.fetchrow(repo.ACCOUNT_BY_EMAIL, norm)
    if account is None:
        account, _, secret = await accounts.register(ctx, DEMO_EMAIL, DEMO_PASSWORD)
        assert secret is not None
        _save_key(key_file, secret)
        return Demo(account_id=account["id"], api_key=secret, email=DEMO_EMAIL, password=DEMO_PASSWORD)
    saved = key_file.read_text().strip() if key_file.exists() else ""
    if saved:
        async with ctx.pool.acquire() as conn:
            row = await conn.fetchrow(repo.KEY_BY_HASH, hash_api_key(saved))
        if row is not None and row["status"] == "active" and row["account_id"] == account["id"]:
            return Demo(account_id=account["id"], api_key=saved, email=DEMO_EMAIL, password=DEMO_PASSWORD)
    owner = Principal(account_id=account["id"], email=norm, role=account["role"])
    _, secret = await apikeys.create_key(ctx, owner, KeyCreateIn(label="demo"))
    _save_key(key_file, secret)
    return Demo(account_id=account["id"], api_key=secret, email=DEMO_EMAIL, password=DEMO_PASSWORD)


async def seed_demo(common: CommonSettings, *, upstream_base_url: str) -> Demo:
    settings = config.load(KeysSettings)
    async with open_resources(common, "keys-seed", pool_size=2) as res:
        return await seed_with(Ctx.from_resources(settings, res), upstream_base_url)
