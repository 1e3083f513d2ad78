"""The keys service's console module as a real process: the built pages and assets with their cache rules,
and the local reverse proxy streaming an answer through as it is produced (a buffered proxy would hold every
SSE event until the end)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from services.keys.app import create_app
from services.keys.config import KeysSettings
from shared.config import CommonSettings
from tests import procs
from tests.console.browser import DIST, ensure_built


@pytest.fixture(scope="module")
def keys_and_upstream(common: CommonSettings) -> Iterator[tuple[str, str]]:
    ensure_built()
    with procs.running("mock-upstream", ready_path="/healthz") as upstream:
        env = {
            # The "gateway" here is the mock upstream itself: it speaks the same /v1/chat/completions.
            "FAREGATE_KEYS_GATEWAY_URL": upstream.url,
            "FAREGATE_KEYS_NOTIFIER_URL": f"http://127.0.0.1:{procs.free_port()}",  # nothing listens there
        }
        with procs.running("keys", env, ready_path="/readyz") as keys:
            yield keys.url, upstream.url


def test_pages_and_assets_are_served_with_their_cache_rules(keys_and_upstream: tuple[str, str]) -> None:
    base, _ = keys_and_upstream
    index = (DIST / "index.html").read_text()
    for path in ("/", "/login", "/playground", "/reset-password?token=abc", "/admin/channels"):
        r = httpx.get(base + path)
        assert r.status_code == 200, path
        assert r.text == index
        assert r.headers["cache-control"] == "no-cache"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    asset = next((DIST / "assets").glob("*.js"))
    r = httpx.get(f"{base}/assets/{asset.name}")
    assert r.status_code == 200 and r.content == asset.read_bytes()
    assert "immutable" in r.headers["cache-control"]
    assert r.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert httpx.get(f"{base}/assets/nope.js").status_code == 404
    assert httpx.get(f"{base}/assets/..%2F..%2Findex.html").status_code == 404
    assert httpx.get(f"{base}/not-a-page").status_code == 404
    # The service's own API is untouched by the pages around it.
    r = httpx.get(f"{base}/api/keys/")
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_logged_in"


def test_the_proxy_streams_events_as_they_come(keys_and_upstream: tuple[str, str]) -> None:
    base, _ = keys_and_upstream
    body = {"model": "gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "Count slowly."}]}
    headers = {"authorization": "Bearer sk-anything", "x-mock-fault": "chunks=5;delay_chunk_ms=300"}
    arrivals: list[float] = []
    start = time.monotonic()
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) >= 5
    # Five pieces 300 ms apart: the first must arrive long before the last (a buffer would bunch them up).
    assert arrivals[-1] - arrivals[0] > 0.9, arrivals


def test_an_unreachable_service_is_a_clear_502(keys_and_upstream: tuple[str, str]) -> None:
    base, _ = keys_and_upstream
    r = httpx.get(f"{base}/api/notifications/preferences")
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unavailable"


def test_without_the_proxy_those_paths_are_not_routed(common: CommonSettings) -> None:
    on = {r.path for r in create_app(KeysSettings(), common).routes}
    off = {r.path for r in create_app(KeysSettings(console_proxy=False), common).routes}
    assert {"/v1", "/api/usage", "/api/notifications"} <= on
    assert not off & {"/v1", "/api/usage", "/api/notifications"}
    assert "/" in off and "/assets/{name:path}" in off  # the pages stay
