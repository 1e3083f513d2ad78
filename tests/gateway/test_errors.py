"""Every refusal in the OpenAI error shape with the status code relay users expect, and an upstream's own
error body never reaching the client."""

from __future__ import annotations

import socketserver
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import openai
import pytest
from litestar.testing import AsyncTestClient

from services.gateway.config import GatewaySettings
from shared import catalog as cat
from shared import events as ev
from tests.gateway.conftest import MOCK_KEY, World, channel, eventually, model, sdk, settings, usage_events

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


def body(**kw: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, **kw}


async def post(gateway: AsyncTestClient[Any], secret: str, payload: Any, **headers: str) -> Any:
    return await gateway.post(
        "/v1/chat/completions", json=payload, headers={"authorization": f"Bearer {secret}", **headers}
    )


def error_of(r: Any) -> dict[str, Any]:
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"}, err
    return dict(err)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"status": "disabled"}, "disabled"),
        ({"status": "deleted"}, "deleted"),
        ({"expires_at": datetime.now(UTC) - timedelta(seconds=1)}, "expired"),
        ({"account_status": "disabled"}, "account"),
    ],
)
async def test_unusable_keys_get_401_saying_why(
    world: World, gateway: AsyncTestClient[Any], overrides: dict[str, Any], says: str
) -> None:
    secret, _ = await world.add_key(**overrides)
    r = await post(gateway, secret, body())
    assert r.status_code == 401
    err = error_of(r)
    assert err["code"] == "invalid_api_key" and says in err["message"].lower()


async def test_missing_key_is_401(world: World, gateway: AsyncTestClient[Any]) -> None:
    r = await gateway.post("/v1/chat/completions", json=body())
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"


async def test_disabling_a_key_takes_effect_at_once_through_the_event(
    world: World, gateway: AsyncTestClient[Any]
) -> None:
    secret, snap = await world.add_key()
    assert (await post(gateway, secret, body())).status_code == 200  # now cached in the worker
    await world.put_key(msgspec.structs.replace(snap, status="disabled"), publish=True)

    async def refused() -> bool:
        return bool((await post(gateway, secret, body())).status_code == 401)

    await eventually(refused, 3)


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (msgspec.json.encode({"messages": MESSAGES}), "model"),
        (msgspec.json.encode({"model": "gpt-4o-mini", "messages": []}), "messages"),
        (msgspec.json.encode(body(max_tokens="lots")), "max_tokens"),
    ],
)
async def test_bad_requests_are_400(
    world: World, gateway: AsyncTestClient[Any], payload: bytes, param: str | None
) -> None:
    secret, _ = await world.add_key()
    r = await gateway.post(
        "/v1/chat/completions",
        content=payload,
        headers={"authorization": f"Bearer {secret}", "content-type": "application/json"},
    )
    assert r.status_code == 400
    err = error_of(r)
    assert err["type"] == "invalid_request_error" and err.get("param") == param


async def test_unknown_model_is_404_model_not_found(world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, _ = await world.add_key()
    with pytest.raises(openai.NotFoundError) as info:
        await sdk(gateway, secret).chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.code == "model_not_found"


async def test_model_outside_the_key_list_or_group_is_403(world: World, gateway: AsyncTestClient[Any]) -> None:
    await world.set_catalog(
        [channel(world.mock, "main", models=("gpt-4o-mini", "gpt-4o"), secret=world.common.secret_key)],
        models=[model(), model("gpt-4o")],
        groups=(cat.Group(name="cheap", models=("gpt-4o-mini",)),),
    )
    await eventually(lambda: _has_model(gateway, "gpt-4o"))
    listed, _ = await world.add_key(models=("gpt-4o-mini",))
    grouped, _ = await world.add_key(group="cheap")
    for secret in (listed, grouped):
        assert (await post(gateway, secret, body())).status_code == 200
        r = await post(gateway, secret, body(model="gpt-4o"))
        assert r.status_code == 403 and "not allowed" in error_of(r)["message"]


async def _has_model(gateway: AsyncTestClient[Any], name: str) -> bool:
    return name in gateway.app.state.gw.catalog.models


async def test_client_ip_outside_the_allow_list_is_403(world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, _ = await world.add_key(ip_allow=("10.0.0.0/8", "2001:db8::/32"))
    r = await post(gateway, secret, body())
    assert r.status_code == 403 and "IP address" in error_of(r)["message"]


@pytest.mark.parametrize(
    ("allow", "ip", "ok"),
    [
        (("203.0.113.7",), "203.0.113.7", True),
        (("203.0.113.0/24",), "203.0.113.200", True),
        (("203.0.113.0/24",), "203.0.114.1", False),
        (("2001:db8::/32",), "2001:db8:1::5", True),
        (("2001:db8::/32",), "2001:db9::1", False),
        (("192.0.2.0/24",), "::ffff:192.0.2.9", True),  # v4-mapped v6 as a dual-stack socket reports it
        (("192.0.2.0/24", "not an ip"), "192.0.2.1", True),  # a malformed entry is skipped, not fatal
        (("192.0.2.0/24",), "testclient", False),
    ],
)
def test_ip_allow_list_forms(allow: tuple[str, ...], ip: str, ok: bool) -> None:
    from services.gateway.auth import cached, check_ip
    from services.gateway.errors import NotAllowed
    from shared.events import KeySnapshot

    entry = cached(KeySnapshot(key_id="k", key_hash="h", account_id="a", user_id="u", status="active", ip_allow=allow))
    if ok:
        check_ip(entry, ip)
    else:
        with pytest.raises(NotAllowed):
            check_ip(entry, ip)


async def test_empty_wallet_is_402_insufficient_quota(world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, _ = await world.add_key(balance=0)
    r = await post(gateway, secret, body())
    assert r.status_code == 402 and error_of(r)["code"] == "insufficient_quota"
    # a wallet whose balance no one loaded (and billing cannot be reached here) is refused too, not let
    # through
    secret, _ = await world.add_key(balance=None)
    r = await post(gateway, secret, body())
    assert r.status_code == 402


async def test_key_quota_is_402(world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, _ = await world.add_key(quota_micros=1)  # one micro-dollar cannot cover the worst case
    r = await post(gateway, secret, body())
    assert r.status_code == 402 and "spending limit" in error_of(r)["message"]


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    return settings(max_body_bytes=4096, first_byte_timeout_s=1.0)


async def test_body_over_the_limit_is_413(world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, _ = await world.add_key()
    r = await post(gateway, secret, body(messages=[{"role": "user", "content": "x" * 5000}]))
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"


async def test_upstream_error_body_and_key_never_reach_the_client(world: World, gateway: AsyncTestClient[Any]) -> None:
    await world.set_catalog([channel(world.mock, "broken", fault="fail500", secret=world.common.secret_key)])
    await eventually(lambda: _has_channel(gateway, "broken"))
    secret, snap = await world.add_key()
    r = await post(gateway, secret, body())
    assert r.status_code == 503 and error_of(r)["code"] == "no_channel_available"
    assert "mock" not in r.text.lower() and MOCK_KEY not in r.text
    [event] = await usage_events(world.res, {r.headers["x-request-id"]})
    assert event.status == 503 and event.error_code == "no_channel_available" and event.prompt_tokens == 0
    w = await world.wallet(snap.account_id)
    assert w.get("reserved") == 0 and w.get("pending", 0) == 0  # nothing charged for a failed request


async def test_upstream_timeout_is_504(world: World, gateway: AsyncTestClient[Any]) -> None:
    await world.set_catalog([channel(world.mock, "slow", fault="delay_first_ms=3000", secret=world.common.secret_key)])
    await eventually(lambda: _has_channel(gateway, "slow"))
    secret, _ = await world.add_key()
    r = await post(gateway, secret, body())
    assert r.status_code == 504 and error_of(r)["code"] == "upstream_timeout"


async def test_upstream_400_is_a_400_without_its_body(world: World, gateway: AsyncTestClient[Any]) -> None:
    await world.set_catalog([channel(world.mock, "picky", fault="fail400", secret=world.common.secret_key)])
    await eventually(lambda: _has_channel(gateway, "picky"))
    secret, _ = await world.add_key()
    r = await post(gateway, secret, body())
    assert r.status_code == 400 and error_of(r)["code"] == "upstream_rejected_request"
    assert "mock" not in r.text.lower()


class _Garbage(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.request.recv(65536)
        self.request.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\nnot json!")


async def test_upstream_answering_garbage_is_502(world: World, gateway: AsyncTestClient[Any]) -> None:
    # A thread, not the test's loop: the app may run its lifespan in another loop of the test client.
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        await world.set_catalog(
            [channel(world.mock, "junk", base_url=f"http://127.0.0.1:{port}/v1", secret=world.common.secret_key)]
        )
        await eventually(lambda: _has_channel(gateway, "junk"))
        secret, _ = await world.add_key()
        r = await post(gateway, secret, body())
    finally:
        server.shutdown()
        server.server_close()
    assert r.status_code == 502 and error_of(r)["code"] == "bad_upstream_response"


async def _has_channel(gateway: AsyncTestClient[Any], cid: str) -> bool:
    return cid in gateway.app.state.gw.catalog.channels and len(gateway.app.state.gw.catalog.channels) == 1


async def test_unknown_route_is_404_in_openai_shape(world: World, gateway: AsyncTestClient[Any]) -> None:
    r = await gateway.post("/v1/no/such/thing", json={})
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"


async def test_account_change_makes_workers_reread_its_keys(world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, snap = await world.add_key()
    assert (await post(gateway, secret, body())).status_code == 200
    # keys rewrites the account's snapshots, then announces the account change
    await world.put_key(msgspec.structs.replace(snap, account_status="disabled"), publish=False)
    assert world.res.publisher
    await world.res.publisher.publish(
        ev.AccountChanged(account_id=snap.account_id, status="disabled", group="default", role="user")
    )

    async def refused() -> bool:
        r = await post(gateway, secret, body())
        return bool(r.status_code == 401 and "account" in error_of(r)["message"])

    await eventually(refused, 3)


async def test_a_key_created_after_a_miss_works_at_once(world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, snap = await world.add_key()
    await world.redis.delete(world.res.keys.api_key(snap.key_hash))
    assert (await post(gateway, secret, body())).status_code == 401  # unknown now, and remembered as unknown
    await world.put_key(snap, publish=True)  # keys creates it: the event reaches every worker

    async def accepted() -> bool:
        return bool((await post(gateway, secret, body())).status_code == 200)

    await eventually(accepted, 3)


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        ("10.0.0.5", "203.0.113.9", "203.0.113.9"),  # through the ingress
        ("10.0.0.5", "198.51.100.1, 203.0.113.9, 10.0.0.7", "203.0.113.9"),  # spoofed left entry ignored
        ("203.0.113.50", "198.51.100.1", "203.0.113.50"),  # not from a trusted proxy: header ignored
        ("10.0.0.5", None, "10.0.0.5"),
    ],
)
def test_client_address_behind_trusted_proxies(peer: str, xff: str | None, client: str) -> None:
    from services.gateway.auth import client_address, networks

    assert client_address(peer, xff, networks(("10.0.0.0/8",))) == client


async def test_allow_list_checks_the_forwarded_client_behind_a_trusted_proxy(world: World) -> None:
    from tests import procs
    from tests.gateway.conftest import use_catalog

    dead = f"http://127.0.0.1:{procs.free_port()}"
    env = {
        "FAREGATE_KEYS_URL": dead,
        "FAREGATE_BILLING_URL": dead,
        "FAREGATE_GATEWAY_TRUSTED_PROXIES": "127.0.0.1",
    }
    gw = procs.start("gateway", env, ready_path="/readyz")
    try:
        await use_catalog(world, [gw], [channel(world.mock, "main", secret=world.common.secret_key)])
        secret, _ = await world.add_key(ip_allow=("203.0.113.0/24",))
        async with httpx.AsyncClient(timeout=30) as client:
            url, payload = f"{gw.url}/v1/chat/completions", body()
            ok = await client.post(
                url,
                json=payload,
                headers={"authorization": f"Bearer {secret}", "x-forwarded-for": "203.0.113.9"},
            )
            refused = await client.post(
                url,
                json=payload,
                headers={"authorization": f"Bearer {secret}", "x-forwarded-for": "198.51.100.1"},
            )
        assert ok.status_code == 200 and refused.status_code == 403
    finally:
        gw.stop()
