"""Admin channel operations through real processes (keys, gateway, mock upstream): the breaker report and
"test this channel", asked of keys exactly as the console does and answered by the gateway."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import httpx
import pytest

from services.keys import catalog_admin
from services.keys.context import Ctx
from services.keys.schemas import ChannelIn
from services.keys.seed import MOCK_UPSTREAM_KEY, seed_catalog
from shared.config import CommonSettings
from tests import procs
from tests.keys.conftest import PASSWORD, unique_email

ADMIN_EMAIL, ADMIN_PASSWORD = "ops-root@example.com", "ops-root-password-123"


@pytest.fixture(scope="module")
def stack(common: CommonSettings) -> Iterator[dict[str, procs.ServiceProcess]]:
    ports = {name: procs.free_port() for name in ("keys", "gateway", "mock-upstream")}
    env = {"FAREGATE_KEYS_URL": f"http://127.0.0.1:{ports['keys']}",
           "FAREGATE_KEYS_GATEWAY_URL": f"http://127.0.0.1:{ports['gateway']}",
           "FAREGATE_KEYS_ADMIN_EMAIL": ADMIN_EMAIL, "FAREGATE_KEYS_ADMIN_PASSWORD": ADMIN_PASSWORD}
    saved = os.environ.get("FAREGATE_KEYS_URL")
    os.environ["FAREGATE_KEYS_URL"] = env["FAREGATE_KEYS_URL"]
    started: dict[str, procs.ServiceProcess] = {}
    try:
        started["mock-upstream"] = procs.start("mock-upstream", env, port=ports["mock-upstream"])
        started["keys"] = procs.start("keys", env, port=ports["keys"], ready_path="/readyz")
        started["gateway"] = procs.start("gateway", env, port=ports["gateway"], ready_path="/readyz")
        yield started
    finally:
        for sp in reversed(list(started.values())):
            sp.stop()
        if saved is None:
            os.environ.pop("FAREGATE_KEYS_URL", None)
        else:
            os.environ["FAREGATE_KEYS_URL"] = saved


async def _login(keys: httpx.AsyncClient, email: str, password: str) -> str:
    r = await keys.post("/api/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return str(r.json()["csrf_token"])


async def test_admin_sees_channel_health_and_tests_channels(
        stack: dict[str, procs.ServiceProcess], ctx: Ctx) -> None:
    mock = stack["mock-upstream"].url
    await seed_catalog(ctx, mock)
    # Disabled, so no client traffic reaches them; a test still can.
    await catalog_admin.ensure_channel(ctx, ChannelIn(
        id="failing", name="Always 500", provider="openai", base_url=mock.rstrip("/") + "/v1",
        api_keys=[MOCK_UPSTREAM_KEY], models=["gpt-4o-mini"], model_map={"gpt-4o-mini": "gpt-4o-mini@fail500"},
        status="disabled"))
    await catalog_admin.ensure_channel(ctx, ChannelIn(
        id="dead", name="Nobody listens", provider="openai", base_url="http://127.0.0.1:9/v1",
        api_keys=[MOCK_UPSTREAM_KEY], models=["gpt-4o-mini"], status="disabled"))

    async with httpx.AsyncClient(base_url=stack["keys"].url, timeout=30) as keys:
        csrf = await _login(keys, ADMIN_EMAIL, ADMIN_PASSWORD)
        ids: set[str] = set()
        for _ in range(100):  # the gateway picks the catalog edit up from its catalog.changed event
            health = await keys.get("/api/admin/channels/health")
            assert health.status_code == 200, health.text
            rows = health.json()["channels"]
            ids = {row["channel_id"] for row in rows}
            if {"mock", "failing", "dead"} <= ids:
                break
            await asyncio.sleep(0.1)
        assert {"mock", "failing", "dead"} <= ids
        mock_row = next(row for row in rows if row["channel_id"] == "mock")
        assert mock_row["state"] == "closed" and mock_row["name"] == "Mock upstream (demo)"

        h = {"X-CSRF-Token": csrf}
        ok = (await keys.post("/api/admin/channels/mock/test", headers=h)).json()
        assert ok["ok"] is True and ok["status"] == 200 and ok["error"] == "" and ok["latency_ms"] >= 0
        failing = (await keys.post("/api/admin/channels/failing/test", headers=h)).json()
        assert failing == {**failing, "ok": False, "status": 500, "error": "upstream_500"}
        dead = (await keys.post("/api/admin/channels/dead/test", headers=h)).json()
        assert dead["ok"] is False and dead["status"] == 0 and dead["error"].startswith("connect_error")
        unknown = await keys.post("/api/admin/channels/nope/test", headers=h)
        assert unknown.status_code == 404
        no_csrf = await keys.post("/api/admin/channels/mock/test")
        assert no_csrf.status_code == 403

        # A test neither opens nor counts against the breaker: it is not traffic.
        after = (await keys.get("/api/admin/channels/health")).json()["channels"]
        failing_row = next(row for row in after if row["channel_id"] == "failing")
        assert failing_row["state"] == "closed" and failing_row["window_errors"] == 0

    async with httpx.AsyncClient(base_url=stack["keys"].url, timeout=30) as user:
        r = await user.post("/api/auth/register", json={"email": unique_email("chops"), "password": PASSWORD})
        assert r.status_code == 201, r.text
        user_csrf = r.json()["csrf_token"]
        assert (await user.get("/api/admin/channels/health")).status_code == 403
        denied = await user.post("/api/admin/channels/mock/test", headers={"X-CSRF-Token": user_csrf})
        assert denied.status_code == 403

    # The gateway's internal endpoints refuse a caller without the internal token.
    async with httpx.AsyncClient(base_url=stack["gateway"].url, timeout=10) as gw:
        assert (await gw.post("/internal/channels/mock/test")).status_code == 401
