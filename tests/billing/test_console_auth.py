"""A console user signed in with the keys service reaches their own wallet with the session cookie; writes
need the CSRF token; a stale session is refused. The keys service runs for real (`faregate keys`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import nats
import pytest
from litestar.testing import AsyncTestClient

from services.billing.app import create_app
from services.billing.config import BillingSettings
from shared import bus, cache
from shared.config import CommonSettings
from shared.events import new_id
from tests import procs

NAMESPACE = f"bauth{new_id()[:8]}"


@pytest.fixture(scope="module")
def keys_service(common: CommonSettings) -> Iterator[procs.ServiceProcess]:
    """The keys service in a namespace of its own, so the account events it publishes stay out of the streams
    other tests in the session count."""
    try:
        with procs.running("keys", {"FAREGATE_NAMESPACE": NAMESPACE}) as sp:
            yield sp
    finally:
        asyncio.run(_drop_namespace(common))


async def _drop_namespace(common: CommonSettings) -> None:
    nc = await nats.connect(common.nats_url)
    try:
        for spec in bus.STREAMS:
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_stream(bus.stream_name(NAMESPACE, spec))
    finally:
        await nc.close()
    r = cache.client(common.redis_url)
    try:
        async for key in r.scan_iter(f"{NAMESPACE}:*", count=1000):
            await r.delete(key)
    finally:
        await r.aclose()


async def test_session_cookie_csrf_and_expiry(common: CommonSettings,
                                              keys_service: procs.ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=keys_service.url) as keys:
        email = f"payer-{new_id()[:8]}@example.com"  # unique: the whole suite shares one database
        r = await keys.post("/api/auth/register", json={"email": email, "password": "correct horse battery"})
        assert r.status_code == 201, r.text
        account_id = r.json()["account"]["id"]
        session = r.cookies["fg_session"]
        csrf = r.cookies["csrf"]

    app = create_app(BillingSettings(plan_expiry_scan_s=3600),
                     msgspec.structs.replace(common, keys_url=keys_service.url, namespace=NAMESPACE),
                     consume=False)
    async with AsyncTestClient(app) as c:
        c.cookies.set("fg_session", session)
        r = await c.get("/v1/billing/wallet")
        assert r.status_code == 200, r.text
        assert r.json()["account_id"] == account_id
        # A write without the CSRF token (a cross-site form post) is refused; with it, it goes through.
        body: dict[str, Any] = {"threshold_micros": 2_000_000}
        r = await c.put("/v1/billing/threshold", json=body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
        r = await c.put("/v1/billing/threshold", json=body, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200
        # Someone else's wallet is out of reach; admin routes too.
        assert (await c.get("/v1/billing/wallet?account_id=someone-else")).status_code == 403
        assert (await c.get("/v1/admin/billing/plans")).status_code == 403
        c.cookies.set("fg_session", "not-a-session")
        r = await c.get("/v1/billing/wallet")
        assert r.status_code == 401
