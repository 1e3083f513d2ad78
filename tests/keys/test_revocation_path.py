"""The revocation path of the keys service: when `POST /api/keys/{id}/disable` returns, the change is committed,
the snapshot is in Redis and `key.changed` is in the stream, in that order, and nothing else the call does (its
log line, the answer) comes before them. The time it takes is measured by the bench (bench/revocation.py)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.keys import apikeys
from services.keys.context import Ctx, Principal
from services.keys.schemas import KeyPatch
from shared import bus
from shared import events as ev
from shared.crypto import hash_api_key
from shared.runtime import Resources
from tests.keys.conftest import User, register
from tests.keys.test_api_keys import snapshot_in_redis


async def last_key_changed(res: Resources) -> ev.KeyChanged:
    """The newest key.changed in JetStream, read from the stream itself (no subscriber that could lag)."""
    assert res.js is not None
    spec = next(s for s in bus.STREAMS if s.name == "ACCOUNTS")
    ns = res.common.namespace
    raw = await res.js.get_last_msg(bus.stream_name(ns, spec), bus.subject(ns, "key.changed"))
    assert raw.data is not None
    event = ev.decode(raw.data)
    assert isinstance(event, ev.KeyChanged)
    return event


async def test_when_disable_returns_the_snapshot_and_the_event_are_out(
        client: AsyncTestClient[Litestar], admin: User, resources: Resources) -> None:
    alice = await register(client)
    key_hash = hash_api_key(alice.api_key)
    url = f"/api/keys/{alice.key_id}"
    for action, status in (("disable", "disabled"), ("enable", "active"), ("disable", "disabled")):
        r = await admin.post(f"{url}/{action}")
        assert r.status_code == 200 and r.json()["status"] == status
        # No waiting: both are there the moment the call has answered.
        snap = await snapshot_in_redis(resources.common, key_hash)
        assert snap is not None and snap.status == status and snap.key_id == alice.key_id
        changed = await last_key_changed(resources)
        assert changed.key.key_id == alice.key_id and changed.key.status == status
        assert changed.key == snap
        # The answer is the key as it now reads.
        assert r.json() == (await alice.get(url)).json()
    # The owner may disable their own key; a deleted key is gone for good, also for this path.
    assert (await alice.post(f"{url}/enable")).json()["status"] == "active"
    assert (await alice.delete(url)).status_code == 204
    assert (await alice.post(f"{url}/disable")).status_code == 404
    assert (await admin.post(f"{url}/enable")).status_code == 404


@dataclass
class Recorder:
    """Stands in for the publisher: notes, at each key.changed, what Redis and the database hold (read on
    other connections) and where it falls among the call's log lines, then publishes for real."""

    inner: bus.Publisher
    ctx: Ctx
    steps: list[str]
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def publish(self, event: ev.Event, ack_wait_s: float = 2.0) -> None:
        if isinstance(event, ev.KeyChanged):
            raw = await self.ctx.redis.get(self.ctx.keys.api_key(event.key.key_hash))
            async with self.ctx.pool.acquire() as conn:
                committed = await conn.fetchval("SELECT status FROM keys.api_keys WHERE id = $1",
                                                event.key.key_id)
            in_redis = None if raw is None else msgspec.json.decode(raw, type=ev.KeySnapshot).status
            self.seen.append({"event": event.key.status, "redis": in_redis, "committed": committed})
            self.steps.append("published")
        await self.inner.publish(event, ack_wait_s)


class StepLog(logging.Handler):
    def __init__(self, steps: list[str]) -> None:
        super().__init__()
        self.steps = steps

    def emit(self, record: logging.LogRecord) -> None:
        self.steps.append("logged: " + record.getMessage())


@pytest.mark.parametrize("patch", [KeyPatch(status="disabled"), KeyPatch(status="disabled", label="stolen")],
                         ids=["status only", "with other fields"])
async def test_the_change_is_committed_then_in_redis_then_announced_before_anything_else(
        client: AsyncTestClient[Litestar], ctx: Ctx, patch: KeyPatch) -> None:
    alice = await register(client)
    steps: list[str] = []
    recorder = Recorder(inner=ctx.publisher, ctx=ctx, steps=steps)
    watched = dataclasses.replace(ctx, publisher=cast(bus.Publisher, recorder))
    handler = StepLog(steps)
    logger = logging.getLogger("faregate.keys.apikeys")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        who = Principal(account_id=alice.account_id, email=alice.email, role="user")
        out = await apikeys.update_key(watched, who, alice.key_id, patch)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert out.status == "disabled"
    assert recorder.seen == [{"event": "disabled", "redis": "disabled", "committed": "disabled"}]
    assert steps == ["published", "logged: key changed"]
