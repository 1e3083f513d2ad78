"""API keys through the HTTP API, against real Postgres, Redis and NATS: what a user does in "Token
Management", and what gateways see of it (snapshots in Redis, key.changed events)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.keys import apikeys, scan
from services.keys.context import Ctx, Principal
from services.keys.errors import CacheUnavailable
from services.keys.schemas import KeyPatch
from shared import cache
from shared import events as ev
from shared.config import CommonSettings
from shared.crypto import hash_api_key
from shared.wallet import SpendGuard
from tests.keys.conftest import Tap, User, register

INTERNAL = "/internal/keys/"


async def snapshot_in_redis(common: CommonSettings, key_hash: str) -> ev.KeySnapshot | None:
    r = aioredis.Redis.from_url(common.redis_url)
    try:
        raw = await r.get(f"{common.namespace}:key:{key_hash}")
    finally:
        await r.aclose()
    return None if raw is None else msgspec.json.decode(raw, type=ev.KeySnapshot)


async def internal_snapshot(client: AsyncTestClient[Litestar], common: CommonSettings, key_hash: str) -> Any:
    return await client.get(INTERNAL + key_hash, headers={"X-Internal-Token": common.internal_token})


async def test_a_new_account_gets_a_default_key_that_gateways_can_find(
        client: AsyncTestClient[Litestar], common: CommonSettings, tap: Tap) -> None:
    alice = await register(client)
    assert re.fullmatch(r"sk-[A-Za-z0-9_-]{43}", alice.api_key)  # 32 random bytes = 256 bits
    key_hash = hash_api_key(alice.api_key)

    snap = await snapshot_in_redis(common, key_hash)
    assert snap is not None and snap.key_id == alice.key_id and snap.status == "active"
    assert snap.account_id == alice.account_id and snap.concurrency_limit == 100

    r = await internal_snapshot(client, common, key_hash)
    assert r.status_code == 200 and r.json()["key_id"] == alice.key_id
    changed = await tap.wait_for(lambda e: isinstance(e, ev.KeyChanged) and e.key.key_id == alice.key_id)
    assert isinstance(changed, ev.KeyChanged) and changed.key.key_hash == key_hash
    await tap.wait_for(lambda e: isinstance(e, ev.AccountRegistered) and e.account_id == alice.account_id)


async def test_internal_lookup_refills_redis_and_refuses_without_token(client: AsyncTestClient[Litestar],
                                                                       common: CommonSettings) -> None:
    alice = await register(client)
    key_hash = hash_api_key(alice.api_key)
    r = aioredis.Redis.from_url(common.redis_url)
    try:
        await r.delete(f"{common.namespace}:key:{key_hash}")
        assert (await client.get(INTERNAL + key_hash)).status_code == 401
        wrong = await client.get(INTERNAL + key_hash, headers={"X-Internal-Token": "wrong"})
        assert wrong.status_code == 401
        assert (await internal_snapshot(client, common, key_hash)).status_code == 200
        assert await r.get(f"{common.namespace}:key:{key_hash}") is not None
    finally:
        await r.aclose()
    unknown = await internal_snapshot(client, common, "0" * 64)
    assert unknown.status_code == 404
    assert (await internal_snapshot(client, common, "not-a-hash")).status_code == 400


async def test_create_key_with_every_control_and_see_it_listed(client: AsyncTestClient[Litestar],
                                                               common: CommonSettings, catalog_loaded: Any,
                                                               tap: Tap) -> None:
    alice = await register(client)
    expires = datetime.now(UTC) + timedelta(days=30)
    r = await alice.post("/api/keys", json={
        "label": "ci bot", "quota_micros": 5_000_000, "models": ["gpt-4o-mini", "deepseek-chat"],
        "ip_allow": ["203.0.113.7", "10.0.0.0/8", "2001:db8::/32", "2001:DB8:0:0::1"],
        "expires_at": expires.isoformat(), "rpm_limit": 60, "tpm_limit": 100_000, "concurrency_limit": 5,
    })
    assert r.status_code == 201, r.text
    body = r.json()
    secret, key = body["secret"], body["key"]
    assert secret.startswith("sk-") and key["prefix"] == secret[:8]
    assert key["ip_allow"] == ["203.0.113.7", "10.0.0.0/8", "2001:db8::/32", "2001:db8::1"]
    assert key["quota_left_micros"] == 5_000_000 and key["status"] == "active"

    snap = await snapshot_in_redis(common, hash_api_key(secret))
    assert snap is not None
    assert snap.models == ("gpt-4o-mini", "deepseek-chat")
    assert snap.rpm_limit == 60 and snap.tpm_limit == 100_000
    assert snap.concurrency_limit == 5 and snap.quota_micros == 5_000_000
    assert snap.expires_at is not None and abs((snap.expires_at - expires).total_seconds()) < 1

    listed = (await alice.get("/api/keys")).json()
    assert listed["total"] == 2
    assert {k["label"] for k in listed["items"]} == {"default", "ci bot"}
    assert all("secret" not in k and "key_hash" not in k for k in listed["items"])
    await tap.wait_for(lambda e: isinstance(e, ev.KeyChanged) and e.key.key_id == key["id"])


async def test_rename_regroup_limits_disable_enable_delete_each_publish_a_snapshot(
        client: AsyncTestClient[Litestar], common: CommonSettings, catalog_loaded: Any, tap: Tap) -> None:
    alice = await register(client)
    key_hash = hash_api_key(alice.api_key)
    url = f"/api/keys/{alice.key_id}"

    r = await alice.patch(url, json={"label": "renamed", "rpm_limit": 10, "models": ["gpt-4o"]})
    assert r.status_code == 200, r.text
    assert r.json()["label"] == "renamed"
    snap = await snapshot_in_redis(common, key_hash)
    assert snap is not None and snap.rpm_limit == 10 and snap.models == ("gpt-4o",)

    assert (await alice.post(url + "/disable")).json()["status"] == "disabled"
    snap = await snapshot_in_redis(common, key_hash)
    assert snap is not None and snap.status == "disabled"
    await tap.wait_for(lambda e: isinstance(e, ev.KeyChanged) and e.key.key_hash == key_hash
                       and e.key.status == "disabled")

    assert (await alice.post(url + "/enable")).json()["status"] == "active"
    assert (await alice.patch(url, json={"status": "disabled"})).json()["status"] == "disabled"
    assert (await alice.patch(url, json={"group": "vip"})).status_code == 400  # not a selectable group

    assert (await alice.delete(url)).status_code == 204
    snap = await snapshot_in_redis(common, key_hash)
    assert snap is not None and snap.status == "deleted"  # kept, so a cache miss can never revive it
    await tap.wait_for(lambda e: isinstance(e, ev.KeyChanged) and e.key.key_hash == key_hash
                       and e.key.status == "deleted")
    assert (await alice.get(url)).status_code == 404
    assert (await alice.post(url + "/enable")).status_code == 404  # irreversible
    assert (await internal_snapshot(client, common, key_hash)).json()["status"] == "deleted"
    assert (await alice.get("/api/keys")).json()["total"] == 0


async def test_ip_allow_list_accepts_v4_v6_and_cidr_and_names_each_bad_entry(
        client: AsyncTestClient[Litestar]) -> None:
    alice = await register(client)
    good = ["192.0.2.1", "198.51.100.0/24", "::1", "2001:db8:abcd::/48", "fe80::1"]
    r = await alice.post("/api/keys", json={"label": "ips", "ip_allow": good})
    assert r.status_code == 201, r.text
    assert r.json()["key"]["ip_allow"] == good

    r = await alice.post("/api/keys", json={"label": "ips", "ip_allow": [
        "192.0.2.1", "300.1.1.1", "10.0.0.1/8", "2001:db8::/129", "example.com"]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert set(err["fields"]) == {"ip_allow[1]", "ip_allow[2]", "ip_allow[3]", "ip_allow[4]"}

    r = await alice.patch(f"/api/keys/{alice.key_id}", json={"ip_allow": ["1.2.3.4/33"]})
    assert r.status_code == 400 and "ip_allow[0]" in r.json()["error"]["fields"]


async def test_expiry_must_be_future_and_an_expired_key_shows_as_expired(
        client: AsyncTestClient[Litestar], common: CommonSettings) -> None:
    alice = await register(client)
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    r = await alice.post("/api/keys", json={"label": "old", "expires_at": past})
    assert r.status_code == 400 and "expires_at" in r.json()["error"]["fields"]
    naive = await alice.post("/api/keys", json={"label": "tz", "expires_at": "2099-01-01T00:00:00"})
    assert naive.status_code == 400

    soon = datetime.now(UTC) + timedelta(seconds=2)
    r = await alice.post("/api/keys", json={"label": "soon", "expires_at": soon.isoformat()})
    assert r.status_code == 201
    key_id, secret = r.json()["key"]["id"], r.json()["secret"]
    snap = await snapshot_in_redis(common, hash_api_key(secret))
    assert snap is not None and snap.expires_at is not None  # gateways refuse from this instant on
    await asyncio.sleep(2.2)
    assert (await alice.get(f"/api/keys/{key_id}")).json()["status"] == "expired"

    # Clearing the expiry (null) revives it.
    r = await alice.patch(f"/api/keys/{key_id}", json={"expires_at": None})
    assert r.json()["status"] == "active" and r.json()["expires_at"] is None
    snap = await snapshot_in_redis(common, hash_api_key(secret))
    assert snap is not None and snap.expires_at is None


async def test_rotation_keeps_settings_and_the_old_secret_works_only_for_the_grace_period(
        client: AsyncTestClient[Litestar], common: CommonSettings, ctx: Ctx, tap: Tap) -> None:
    alice = await register(client)
    await alice.patch(f"/api/keys/{alice.key_id}", json={"rpm_limit": 7, "label": "prod"})
    old_hash = hash_api_key(alice.api_key)

    r = await alice.post(f"/api/keys/{alice.key_id}/rotate", json={"grace_seconds": 2})
    assert r.status_code == 200, r.text
    new_secret = r.json()["secret"]
    assert new_secret != alice.api_key and r.json()["key"]["label"] == "prod"
    assert r.json()["key"]["previous_secret_valid_until"] is not None
    new_hash = hash_api_key(new_secret)

    changed = await tap.wait_for(lambda e: isinstance(e, ev.KeyChanged) and e.key.key_hash == new_hash)
    assert isinstance(changed, ev.KeyChanged) and changed.previous_hash == old_hash
    assert changed.key.grace_until is not None and changed.key.rpm_limit == 7

    old = (await internal_snapshot(client, common, old_hash)).json()
    assert old["status"] == "active" and old["key_id"] == alice.key_id and old["rpm_limit"] == 7
    assert old["grace_until"] is not None and old["expires_at"] == old["grace_until"]

    await asyncio.sleep(2.1)
    result = await scan.scan_once(ctx)
    assert result.retired >= 1
    ended = await snapshot_in_redis(common, old_hash)
    assert ended is not None and ended.status == "deleted"
    await tap.wait_for(lambda e: isinstance(e, ev.KeyChanged) and e.key.key_hash == old_hash
                       and e.key.status == "deleted")
    assert (await internal_snapshot(client, common, old_hash)).json()["status"] == "deleted"
    assert (await internal_snapshot(client, common, new_hash)).json()["status"] == "active"


async def test_rotation_with_zero_grace_stops_the_old_secret_at_once(client: AsyncTestClient[Litestar],
                                                                     common: CommonSettings) -> None:
    alice = await register(client)
    old_hash = hash_api_key(alice.api_key)
    r = await alice.post(f"/api/keys/{alice.key_id}/rotate", json={"grace_seconds": 0})
    assert r.status_code == 200
    snap = await snapshot_in_redis(common, old_hash)
    assert snap is not None and snap.status == "deleted"
    assert (await internal_snapshot(client, common, old_hash)).json()["status"] == "deleted"


async def test_disabling_a_rotated_key_stops_its_old_secret_too(client: AsyncTestClient[Litestar],
                                                                common: CommonSettings) -> None:
    alice = await register(client)
    old_hash = hash_api_key(alice.api_key)
    await alice.post(f"/api/keys/{alice.key_id}/rotate", json={"grace_seconds": 3600})
    await alice.post(f"/api/keys/{alice.key_id}/disable")
    snap = await snapshot_in_redis(common, old_hash)
    assert snap is not None and snap.status == "disabled"


async def test_a_user_can_neither_read_nor_change_another_users_keys(client: AsyncTestClient[Litestar],
                                                                     common: CommonSettings) -> None:
    alice, mallory = await register(client), await register(client)
    url = f"/api/keys/{alice.key_id}"
    attempts = [
        await mallory.get(url),
        await mallory.patch(url, json={"label": "pwned"}),
        await mallory.patch(url, json={"status": "disabled"}),
        await mallory.post(url + "/disable"),
        await mallory.post(url + "/enable"),
        await mallory.post(url + "/rotate", json={"grace_seconds": 0}),
        await mallory.delete(url),
    ]
    assert [a.status_code for a in attempts] == [404] * len(attempts)
    # Listing only ever shows one's own keys, whatever the query asks for.
    for query in ("", "?all=true", f"?account_id={alice.account_id}"):
        items = (await mallory.get("/api/keys" + query)).json()["items"]
        assert {k["account_id"] for k in items} == {mallory.account_id}
    # Creating a key "for" another account makes it for oneself.
    r = await mallory.post(f"/api/keys?account_id={alice.account_id}", json={"label": "x"})
    assert r.json()["key"]["account_id"] == mallory.account_id

    mine = await alice.get(url)
    assert mine.status_code == 200 and mine.json()["label"] == "default" and mine.json()["status"] == "active"
    snap = await snapshot_in_redis(common, hash_api_key(alice.api_key))
    assert snap is not None and snap.status == "active"


async def test_an_admin_sees_and_manages_every_key(client: AsyncTestClient[Litestar], admin: User) -> None:
    alice = await register(client)
    everyone = (await admin.get("/api/keys?all=true&limit=200")).json()
    assert alice.key_id in {k["id"] for k in everyone["items"]}
    only_alice = (await admin.get(f"/api/keys?account_id={alice.account_id}")).json()
    assert [k["id"] for k in only_alice["items"]] == [alice.key_id]
    r = await admin.post(f"/api/keys/{alice.key_id}/disable")
    assert r.status_code == 200 and r.json()["status"] == "disabled"
    r = await admin.post(f"/api/keys?account_id={alice.account_id}", json={"label": "from admin"})
    assert r.json()["key"]["account_id"] == alice.account_id


async def test_writes_need_the_csrf_token_and_reads_need_a_session(client: AsyncTestClient[Litestar]) -> None:
    alice = await register(client)
    no_csrf = await client.post("/api/keys", json={"label": "x"}, headers=alice.headers(csrf=False))
    assert no_csrf.status_code == 403 and no_csrf.json()["error"]["code"] == "csrf_failed"
    wrong = await client.post("/api/keys", json={"label": "x"},
                              headers={**alice.headers(csrf=False), "X-CSRF-Token": "0" * 64})
    assert wrong.status_code == 403
    anonymous = await client.get("/api/keys")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["message"] == "not logged in or login expired"


async def test_bad_input_gets_400_with_field_level_messages(client: AsyncTestClient[Litestar]) -> None:
    alice = await register(client)
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "label"),
        ({"label": 42}, "label"),
        ({"label": "x" * 65}, "label"),
        ({"label": "ok", "models": ["m"] * 501}, "models"),
        ({"label": "ok", "ip_allow": ["1.1.1.1"] * 101}, "ip_allow"),
        ({"label": "ok", "concurrency_limit": 0}, "concurrency_limit"),
        ({"label": "ok", "quota_micros": -1}, "quota_micros"),
        ({"label": "ok", "surprise": True}, "surprise"),
        ({"label": "ok", "models": ["no-such-model"]}, "models"),
    ]
    for body, field in cases:
        r = await alice.post("/api/keys", json=body)
        assert r.status_code == 400, (body, r.text)
        err = r.json()["error"]
        assert err["code"] == "validation_error" and field in err["fields"], (body, err)
    broken = await alice.post("/api/keys", content=b"{not json", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and "error" in broken.json()
    r = await alice.post(f"/api/keys/{alice.key_id}/rotate", json={"grace_seconds": -5})
    assert r.status_code == 400 and "grace_seconds" in r.json()["error"]["fields"]
    r = await alice.get("/api/keys?limit=100000")
    assert r.status_code == 400


async def test_openapi_schema_describes_the_api(client: AsyncTestClient[Litestar]) -> None:
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for path in ("/api/keys", "/api/keys/{key_id}", "/api/keys/{key_id}/rotate", "/api/auth/login",
                 "/api/admin/channels", "/api/models"):
        assert path in paths, sorted(paths)
    assert not any(p.startswith("/internal") for p in paths)


async def test_last_used_comes_from_usage_events_once_each(client: AsyncTestClient[Litestar], ctx: Ctx,
                                                           common: CommonSettings) -> None:
    alice = await register(client)
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    usage = ev.UsageRecorded(request_id="r-" + alice.key_id, account_id=alice.account_id, key_id=alice.key_id,
                             model="gpt-4o-mini", occurred_at=when)
    await ctx.publisher.publish(usage)
    await ctx.publisher.publish(usage)  # a duplicate publish is one event
    deadline = asyncio.get_running_loop().time() + 10
    while (await alice.get(f"/api/keys/{alice.key_id}")).json()["last_used_at"] is None:
        assert asyncio.get_running_loop().time() < deadline, "keys-last-used never applied the event"
        await asyncio.sleep(0.1)
    seen = datetime.fromisoformat((await alice.get(f"/api/keys/{alice.key_id}")).json()["last_used_at"])
    assert seen == when
    # An older event arriving late does not move it backwards.
    late = ev.UsageRecorded(request_id="r2-" + alice.key_id, account_id=alice.account_id, key_id=alice.key_id,
                            model="gpt-4o-mini", occurred_at=when - timedelta(hours=1))
    await ctx.publisher.publish(late)
    conn = await asyncpg.connect(common.database_url)
    try:
        while not await conn.fetchval("SELECT count(*) FROM keys.processed_events WHERE event_id = $1",
                                      late.event_id):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
        stored = await conn.fetchval("SELECT last_used_at FROM keys.api_keys WHERE id = $1", alice.key_id)
        assert stored == when
        claims = await conn.fetchval("SELECT count(*) FROM keys.processed_events WHERE event_id = $1",
                                     usage.event_id)
        assert claims == 1
    finally:
        await conn.close()


async def test_expiring_keys_are_announced_once_per_expiry(client: AsyncTestClient[Litestar], ctx: Ctx,
                                                           tap: Tap) -> None:
    alice = await register(client)
    soon = datetime.now(UTC) + timedelta(days=1)
    await alice.patch(f"/api/keys/{alice.key_id}", json={"expires_at": soon.isoformat()})
    await scan.scan_once(ctx)
    await scan.scan_once(ctx)
    await tap.wait_for(lambda e: isinstance(e, ev.KeyExpiring) and e.key_id == alice.key_id)
    await asyncio.sleep(0.3)
    assert len([e for e in tap.of(ev.KeyExpiring) if e.key_id == alice.key_id]) == 1
    # A new expiry is a new announcement.
    later = soon + timedelta(hours=1)
    await alice.patch(f"/api/keys/{alice.key_id}", json={"expires_at": later.isoformat()})
    await scan.scan_once(ctx)
    await tap.wait_for(lambda e: isinstance(e, ev.KeyExpiring) and e.key_id == alice.key_id
                       and e.expires_at > soon)


async def test_a_secret_is_never_stored_published_or_logged_in_clear(
        client: AsyncTestClient[Litestar], common: CommonSettings, tap: Tap,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    alice = await register(client)
    r = await alice.post("/api/keys", json={"label": "second"})
    second = r.json()["secret"]
    rotation = await alice.post(f"/api/keys/{alice.key_id}/rotate", json={"grace_seconds": 60})
    rotated = rotation.json()["secret"]
    secrets_ = [alice.api_key, second, rotated]
    await asyncio.sleep(0.3)  # let the tap receive the events

    conn = await asyncpg.connect(common.database_url)
    try:
        tables = [r["table_name"] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'keys'")]
        dump = "\n".join([
            str(row[0]) for t in tables
            for row in await conn.fetch(f'SELECT row_to_json(t)::text FROM keys."{t}" t')
        ])
    finally:
        await conn.close()
    rc = aioredis.Redis.from_url(common.redis_url)
    try:
        names = [k async for k in rc.scan_iter(f"{common.namespace}:key:*")]
        redis_dump = b"".join([(await rc.get(k)) or b"" for k in names])
    finally:
        await rc.aclose()
    published = "\n".join(msgspec.json.encode(e).decode() for e in tap.events)
    logged = "\n".join(rec.getMessage() + repr(rec.__dict__) for rec in caplog.records)
    assert hash_api_key(second) in dump  # the hash is there, so the dump really covers the keys table
    for s in secrets_:
        assert s not in dump and s[8:] not in dump
        assert s.encode() not in redis_dump
        assert s not in published
        assert s not in logged


async def test_with_redis_unreachable_a_change_is_still_announced_and_the_caller_told(
        client: AsyncTestClient[Litestar], ctx: Ctx, tap: Tap) -> None:
    alice = await register(client)
    dead = cache.client("redis://127.0.0.1:1/0")
    broken = dataclasses.replace(ctx, redis=dead)
    who = Principal(account_id=alice.account_id, email=alice.email, role="user")
    try:
        with pytest.raises(CacheUnavailable):
            await apikeys.update_key(broken, who, alice.key_id, KeyPatch(status="disabled"))
    finally:
        await dead.aclose()
    # Saved, and every gateway worker heard of it (the event carries the snapshot) ...
    await tap.wait_for(lambda e: isinstance(e, ev.KeyChanged) and e.key.key_id == alice.key_id
                       and e.key.status == "disabled")
    assert (await alice.get(f"/api/keys/{alice.key_id}")).json()["status"] == "disabled"
    # ... and retrying the same change, with Redis back, brings Redis up to date.
    again = await alice.post(f"/api/keys/{alice.key_id}/disable")
    assert again.status_code == 200
    snap = await snapshot_in_redis(ctx.common, hash_api_key(alice.api_key))
    assert snap is not None and snap.status == "disabled"


async def test_quota_used_and_left_come_from_what_billing_debited(client: AsyncTestClient[Litestar],
                                                                  ctx: Ctx) -> None:
    alice = await register(client)
    r = await alice.post("/api/keys", json={"label": "capped", "quota_micros": 2_000_000})
    key_id = r.json()["key"]["id"]
    # Billing keeps `used` in the spend guard's quota hash after each debit (shared/wallet.py).
    await SpendGuard(ctx.redis, ctx.keys).set_quota(key_id, 2_000_000, 750_001)
    shown = (await alice.get(f"/api/keys/{key_id}")).json()
    assert shown["quota_used_micros"] == 750_001 and shown["quota_left_micros"] == 1_249_999
    listed = next(k for k in (await alice.get("/api/keys")).json()["items"] if k["id"] == key_id)
    assert listed["quota_left_micros"] == 1_249_999
    unlimited = (await alice.get(f"/api/keys/{alice.key_id}")).json()
    assert unlimited["quota_micros"] == 0 and unlimited["quota_left_micros"] is None


async def test_the_internal_lookup_answers_even_when_redis_is_down(client: AsyncTestClient[Litestar],
                                                                   ctx: Ctx) -> None:
    alice = await register(client)
    dead = cache.client("redis://127.0.0.1:1/0")
    try:
        broken = dataclasses.replace(ctx, redis=dead)
        snap = await apikeys.snapshot_by_hash(broken, hash_api_key(alice.api_key))
    finally:
        await dead.aclose()
    assert snap is not None and snap.key_id == alice.key_id and snap.status == "active"
