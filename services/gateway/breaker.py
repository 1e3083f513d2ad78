"""Circuit breaker per channel, shared by every gateway pod through Redis.

State lives in `{ns}:cb:{channel}` (closed | open | half_open, since when, why) and attempt counts in
10-second buckets `{ns}:cb:{channel}:b:{n}` forming a sliding window. A failure is recorded at once (it may
open the channel); successes of a closed channel are counted locally and flushed with the periodic refresh, so
the hot path pays no Redis round trip for them. An open channel is skipped until its cool-down ends; then
exactly one request (anywhere) claims the half-open probe: success closes it, failure reopens it with a
doubled cool-down, capped, so a channel is never out forever without a person disabling it in the catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Gauge

from services.gateway.config import GatewaySettings
from shared.cache import Keys

log = logging.getLogger("faregate.gateway.breaker")

CIRCUIT_STATE = Gauge(
    "faregate_gateway_circuit_state",
    "Circuit state per channel: 0 closed, 1 half-open, 2 open",
    ["channel"],
    multiprocess_mode="max",
)
_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}

_LUA = Path(__file__).with_name("lua")
BUCKET_MS = 10_000
PROBE_TIMEOUT_MS = 30_000


@dataclass
class ChannelHealth:
    state: str = "closed"
    since_ms: int = 0
    open_until_ms: int = 0
    probe_deadline_ms: int = 0
    reason: str = ""


OnTransition = Callable[[str, str, str], None]  # channel id, new state, reason


@dataclass
class Breaker:
    redis: aioredis.Redis
    keys: Keys
    settings: GatewaySettings
    on_transition: OnTransition
    view: dict[str, ChannelHealth] = field(default_factory=dict)
    _ok: Tally[str] = field(default_factory=Tally)

    def __post_init__(self) -> None:
        self._record = self.redis.register_script((_LUA / "breaker_record.lua").read_text())
        self._probe = self.redis.register_script((_LUA / "breaker_probe.lua").read_text())
        self._buckets = max(1, self.settings.breaker_window_s * 1000 // BUCKET_MS)

    def _bucket_keys(self, channel_id: str, now_ms: int) -> list[str]:
        current = now_ms // BUCKET_MS
        base = self.keys.breaker(channel_id)
        return [f"{base}:b:{current - i}" for i in range(self._buckets)]

    # --- the request path ---------------------------------------------------------------------------------

    def usable_now(self, channel_id: str) -> str:
        """ "yes" (closed), "probe" (cool-down over: claim the probe first) or "no"."""
        h = self.view.get(channel_id)
        if h is None or h.state == "closed":
            return "yes"
        now = time.time() * 1000
        if h.state == "open" and now >= h.open_until_ms:
            return "probe"
        if h.state == "half_open" and now >= h.probe_deadline_ms:
            return "probe"
        return "no"

    async def claim_probe(self, channel_id: str) -> bool:
        now = int(time.time() * 1000)
        try:
            got = int(await self._probe(keys=[self.keys.breaker(channel_id)], args=[now, PROBE_TIMEOUT_MS]))
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
            return True  # without Redis there is no shared state to protect: let the request try
        if got:
            self.view[channel_id] = ChannelHealth("half_open", now, 0, now + PROBE_TIMEOUT_MS, "probing")
            if got == 2:
                self._transition(channel_id, "half_open", "cool-down over; probing")
        return bool(got)

    def success(self, channel_id: str) -> None:
        h = self.view.get(channel_id)
        if h is not None and h.state != "closed":
            self._spawn(self._send(channel_id, 1, 0, ""))
        else:
            self._ok[channel_id] += 1

    def failure(self, channel_id: str, what: str) -> None:
        self._spawn(self._send(channel_id, 0, 1, what))

    # --- Redis --------------------------------------------------------------------------------------------

    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, channel_id: str, oks: int, errs: int, what: str) -> None:
        s = self.settings
        now = int(time.time() * 1000)
        try:
            out = await self._record(
                keys=[self.keys.breaker(channel_id), *self._bucket_keys(channel_id, now)],
                args=[
                    now,
                    oks,
                    errs,
                    s.breaker_window_s * 1000 + BUCKET_MS,
                    s.breaker_min_requests,
                    int(s.breaker_error_ratio * 1_000_000),
                    int(s.breaker_cooldown_s * 1000),
                    int(s.breaker_max_cooldown_s * 1000),
                    what,
                ],
            )
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
            log.warning("breaker record failed", extra={"channel_id": channel_id, "error": repr(exc)})
            return
        new_state, reason = (x.decode() if isinstance(x, bytes) else str(x) for x in out)
        if new_state:
            until = now + (int(s.breaker_cooldown_s * 1000) if new_state == "open" else 0)
            self.view[channel_id] = ChannelHealth(new_state, now, until, 0, reason)
            self._transition(channel_id, new_state, reason)

    def _transition(self, channel_id: str, state: str, reason: str) -> None:
        CIRCUIT_STATE.labels(channel_id).set(_STATE_VALUE[state])
        log.warning("channel circuit changed", extra={"channel_id": channel_id, "state": state, "reason": reason})
        self.on_transition(channel_id, state, reason)

    async def refresh(self, channel_ids: Iterable[str]) -> None:
        """Flush local success counts and re-read every channel's shared state (one pipeline)."""
        ids = list(channel_ids)
        oks, self._ok = self._ok, Tally()
        now = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        for cid, n in oks.items():
            bucket = self._bucket_keys(cid, now)[0]
            pipe.hincrby(bucket, "ok", n)
            pipe.pexpire(bucket, self.settings.breaker_window_s * 1000 + BUCKET_MS)
        for cid in ids:
            pipe.hgetall(self.keys.breaker(cid))
        results = await pipe.execute()
        for cid, raw in zip(ids, results[len(results) - len(ids) :], strict=True):
            h = health_of(raw)
            old = self.view.get(cid)
            self.view[cid] = h
            if old is None or old.state != h.state:
                CIRCUIT_STATE.labels(cid).set(_STATE_VALUE.get(h.state, 0))

    async def refresh_forever(self, channel_ids: Callable[[], Iterable[str]], stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                await self.refresh(channel_ids())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.breaker_refresh_s)

    async def report(self, channel_ids: Iterable[str]) -> list[dict[str, Any]]:
        """For admins: each channel's state, since when, why, and the window's counts."""
        now = int(time.time() * 1000)
        out = []
        for cid in channel_ids:
            h = health_of(await self.redis.hgetall(self.keys.breaker(cid)))
            oks = errs = 0
            for key in self._bucket_keys(cid, now):
                v = await self.redis.hmget(key, ["ok", "err"])
                oks += int(v[0] or 0)
                errs += int(v[1] or 0)
            out.append(
                {
                    "channel_id": cid,
                    "state": h.state,
                    "since_ms": h.since_ms,
                    "reason": h.reason,
                    "open_until_ms": h.open_until_ms,
                    "window_ok": oks,
                    "window_errors": errs,
                }
            )
        return out


def health_of(raw: dict[Any, Any]) -> ChannelHealth:
    d = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()
    }
    return ChannelHealth(
        state=d.get("state", "closed"),
        since_ms=int(d.get("since_ms", 0)),
        open_until_ms=int(d.get("open_until_ms", 0)),
        probe_deadline_ms=int(d.get("probe_deadline_ms", 0)),
        reason=d.get("reason", ""),
    )
