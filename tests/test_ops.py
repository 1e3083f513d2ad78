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
