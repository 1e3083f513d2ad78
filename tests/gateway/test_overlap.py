"""Overlapped admission (settings.overlap_admission): when this worker knows of no limit near, the upstream call
starts while the admission is on its way to Redis. The money stays exact either way: a request admitted so is
settled like any other, and one refused so gets the refusal, is not charged, and holds nothing."""

from __future__ import annotations

import json
from typing import Any

from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from shared.wallet import SpendGuard
from tests import procs
from tests.gateway.conftest import World, channel, eventually, usage_events

CHAT = {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def overlapped() -> float:
    return REGISTRY.get_sample_value("faregate_gateway_overlapped_admissions_total") or 0.0


async def chat(gateway: AsyncTestClient[Any], secret: str) -> Any:
    return await gateway.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}"})


async def test_with_plenty_of_balance_and_no_limits_admission_overlaps_and_settles_exactly(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, snap = await world.add_key()
    before = overlapped()
    first = await chat(gateway, secret)  # nothing known of this wallet yet: admitted first
    assert first.status_code == 200 and overlapped() == before
    rids = {first.headers["x-request-id"]}
    for _ in range(3):
        r = await chat(gateway, secret)
        assert r.status_code == 200, r.text
        rids.add(r.headers["x-request-id"])
    assert overlapped() == before + 3
    events = await usage_events(world.res, rids)
    charged = sum(e.reserved_micros > 0 and e.prompt_tokens > 0 for e in events)
    assert len(events) == 4 and charged == 4

    async def settled() -> bool:
        w = await world.wallet(snap.account_id)
        return w.get("reserved") == 0 and w.get("pending", 0) > 0

    await eventually(settled)


async def test_a_refusal_that_comes_back_during_the_upstream_call_is_answered_and_not_charged(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, snap = await world.add_key()
    assert (await chat(gateway, secret)).status_code == 200  # the worker now believes the wallet is full
    await eventually(lambda: _nothing_reserved(world, snap.account_id))
    # Another pod spent it all meanwhile: this worker's copy is stale, so it overlaps; Redis refuses.
    await SpendGuard(world.redis, world.res.keys).set_balance(snap.account_id, 0)
    pending_before = (await world.wallet(snap.account_id)).get("pending", 0)
    before = overlapped()
    r = await chat(gateway, secret)
    assert overlapped() == before + 1
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_quota", r.text
    sent = [q for q in world.mock_stats()["requests"] if q["request_id"] == r.headers["x-request-id"]]
    assert sent, "the upstream call was started before the refusal came back"
    [event] = await usage_events(world.res, {r.headers["x-request-id"]})
    assert event.status == 402 and event.prompt_tokens == 0 and event.completion_tokens == 0
    await eventually(lambda: _nothing_reserved(world, snap.account_id))
    assert (await world.wallet(snap.account_id)).get("pending", 0) == pending_before
    # Now the worker knows: the next request is not overlapped.
    r = await chat(gateway, secret)
    assert r.status_code == 402 and overlapped() == before + 1


async def test_a_key_with_a_rate_limit_is_always_admitted_first(world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, _ = await world.add_key(rpm_limit=1000)
    before = overlapped()
    for _ in range(3):
        assert (await chat(gateway, secret)).status_code == 200
    assert overlapped() == before


async def _nothing_reserved(world: World, account_id: str) -> bool:
    return (await world.wallet(account_id)).get("reserved") == 0


async def _counters(world: World, scope: str, owner: str) -> dict[str, str]:
    out = {}
    async for name in world.redis.scan_iter(match=world.res.keys.rate(scope, owner, "*")):
        kind = await world.redis.type(name)
        out[name.decode() if isinstance(name, bytes) else name] = kind.decode() if isinstance(kind, bytes) else kind
    return out


async def test_redis_keeps_only_the_counters_of_limits_that_apply(world: World, gateway: AsyncTestClient[Any]) -> None:
    free, snap = await world.add_key(concurrency_limit=0)
    for _ in range(2):
        assert (await chat(gateway, free)).status_code == 200
    await eventually(lambda: _nothing_reserved(world, snap.account_id))
    assert await _counters(world, "key", snap.key_id) == {}
    assert await _counters(world, "acct", snap.account_id) == {}

    limited, lsnap = await world.add_key(tpm_limit=100_000, concurrency_limit=5)
    r = await chat(gateway, limited)
    assert r.status_code == 200 and r.headers["x-ratelimit-limit-tokens"] == "100000"
    await eventually(lambda: _nothing_reserved(world, lsnap.account_id))
    kinds = await _counters(world, "key", lsnap.key_id)
    assert sorted(kinds.values()) == ["string"], kinds  # the TPM window; no RPM window, the in-flight set emptied
    [tpm] = kinds
    [event] = await usage_events(world.res, {r.headers["x-request-id"]})
    assert int(await world.redis.get(tpm)) == event.prompt_tokens + event.completion_tokens  # corrected at the end
    assert await _counters(world, "acct", lsnap.account_id) == {}


async def test_an_overlapped_admission_is_made_once_whether_or_not_an_upstream_was_reached(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    # The admission goes out when the first upstream request is on the wire; a channel that cannot be reached
    # writes nothing, so the next one's write sends it, or, when none is reached, the failure path does.
    dead = channel(world.mock, "dead", base_url=f"http://127.0.0.1:{procs.free_port()}/v1", priority=10,
                   secret=world.common.secret_key)
    live = channel(world.mock, "live", secret=world.common.secret_key)
    await world.set_catalog([dead, live])
    await eventually(lambda: _loaded(gateway, {"dead", "live"}))
    secret, snap = await world.add_key()
    assert (await chat(gateway, secret)).status_code == 200  # learns the wallet: the next ones overlap
    before = overlapped()
    r = await chat(gateway, secret)
    assert r.status_code == 200 and overlapped() == before + 1
    [event] = await usage_events(world.res, {r.headers["x-request-id"]})
    assert event.channel_id == "live" and event.reserved_micros > 0
    await eventually(lambda: _nothing_reserved(world, snap.account_id))

    await world.set_catalog([dead])
    await eventually(lambda: _loaded(gateway, {"dead"}))
    r = await chat(gateway, secret)
    assert r.status_code == 503 and overlapped() == before + 2, r.text
    [event] = await usage_events(world.res, {r.headers["x-request-id"]})
    assert event.reserved_micros > 0 and event.prompt_tokens == 0  # admitted, then given back: nothing charged
    await eventually(lambda: _nothing_reserved(world, snap.account_id))


async def _loaded(gateway: AsyncTestClient[Any], ids: set[str]) -> bool:
    return set(gateway.app.state.gw.catalog.channels) == ids


STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}


async def stream_events(gateway: AsyncTestClient[Any], secret: str) -> tuple[str, list[dict[str, Any]]]:
    """The request id and the decoded `data:` events of one streamed chat (without [DONE])."""
    r = await gateway.post("/v1/chat/completions", json=STREAM, headers={"authorization": f"Bearer {secret}"})
    assert r.status_code == 200, r.text
    datas = [line[6:] for line in r.text.split("\n") if line.startswith("data: ") and line != "data: [DONE]"]
    return r.headers["x-request-id"], [json.loads(d) for d in datas]


async def test_overlapped_streams_are_admitted_and_settled_exactly(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, snap = await world.add_key()
    assert (await chat(gateway, secret)).status_code == 200  # learns the wallet: the streams overlap
    before = overlapped()
    rids = set()
    for _ in range(3):
        rid, events = await stream_events(gateway, secret)
        assert not any("error" in e for e in events) and events[-1]["usage"]["completion_tokens"] > 0
        rids.add(rid)
    assert overlapped() == before + 3
    recorded = await usage_events(world.res, rids)
    assert len(recorded) == 3
    assert all(e.status == 200 and e.reserved_micros > 0 and e.completion_tokens > 0 for e in recorded)
    await eventually(lambda: _nothing_reserved(world, snap.account_id))
