"""Operations baseline shared by every process: metrics across worker processes."""

from __future__ import annotations

import re

import httpx

from shared.config import CommonSettings
from tests import procs


def test_metrics_cover_every_worker_process(common: CommonSettings) -> None:
    """With two workers, /metrics adds up both processes' samples (prometheus-client multiprocess mode): twelve
    failed logins spread over the workers are all counted, whichever worker answers the scrape."""
    with procs.running("keys", {"FAREGATE_KEYS_WORKERS": "2"}, ready_path="/readyz") as keys:
        with httpx.Client(base_url=keys.url) as client:
            for i in range(12):
                client.post(
                    "/api/auth/login",
                    json={"email": f"nobody{i}@example.com", "password": "wrong-pass"},
                    headers={"X-Forwarded-For": f"10.0.0.{i}"},
                )
            text = client.get("/metrics").text
    counts = [float(v) for v in re.findall(r"^faregate_keys_logins_total\{[^}]*\} (\S+)$", text, re.M)]
    assert sum(counts) == 12, text[:2000]


async def test_readiness_fails_on_a_hard_dependency_and_only_degrades_on_a_soft_one() -> None:
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from shared.web import ops_handlers

    async def ok() -> None:
        return None

    async def down() -> None:
        raise ConnectionError("gone")

    soft = Litestar(ops_handlers({"postgres": ok, "nats": down}, degrade_only=("nats",)))
    hard = Litestar(ops_handlers({"postgres": down, "nats": ok}, degrade_only=("nats",)))
    async with AsyncTestClient(soft) as client:
        r = await client.get("/readyz")
        assert (r.status_code, r.json()["status"]) == (200, "degraded")
        assert r.json()["checks"] == {"postgres": "ok", "nats": "error: ConnectionError"}
    async with AsyncTestClient(hard) as client:
        r = await client.get("/readyz")
        assert (r.status_code, r.json()["status"]) == (503, "unavailable")
