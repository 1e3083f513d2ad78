"""Per-worker state of the gateway: caches, the upstream HTTP client, admission and the breaker, and the
subscriptions that keep the caches true."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg

from services.gateway import upstream_http
from services.gateway.admission import Admission
from services.gateway.auth import IPNetwork, KeyCache, networks
from services.gateway.breaker import Breaker
from services.gateway.catalog_view import CatalogView
from services.gateway.config import GatewaySettings
from shared import catalog as cat
from shared import events as ev
from shared.bus import subject
from shared.config import CommonSettings
from shared.resp import Resp
from shared.runtime import Resources

log = logging.getLogger("faregate.gateway")

INTERNAL_TIMEOUT_S = 5.0


@dataclass
class Gateway:
    settings: GatewaySettings
    common: CommonSettings
    res: Resources
    http: upstream_http.Client  # upstreams: one keep-alive pool per worker
    internal: upstream_http.Client  # keys and billing (INTERNAL_TIMEOUT_S each)
    keycache: KeyCache = field(init=False)
    fast_redis: Resp = field(init=False)  # admission's scripts (shared/resp.py); redis-py for everything else
    catalog: CatalogView = field(init=False)
    admission: Admission = field(init=False)
    breaker: Breaker = field(init=False)
    # Answered requests waiting to be settled and recorded (relay.record_soon), and the timer that flushes them.
    unrecorded: list[Any] = field(default_factory=list)
    record_timer: asyncio.TimerHandle | None = None
    trusted_proxies: tuple[IPNetwork, ...] = field(init=False)
    # channel id -> monotonic time before which it is not tried (an upstream's Retry-After)
    cooling: dict[str, float] = field(default_factory=dict)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Settle replies that answered requests' accounting waits on by callback (relay.flush_records), not by task.
    _waiting: set[asyncio.Future[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        assert self.res.redis is not None
        self.trusted_proxies = networks(self.settings.trusted_proxies)
        self.keycache = KeyCache(self._key_from_redis, self._key_from_keys, self.settings.negative_cache_s)
        self.catalog = CatalogView.build(cat.Catalog(), self.common.secret_key)
        self.fast_redis = Resp.from_url(self.common.redis_url)
        self.admission = Admission(self.fast_redis, self.res.keys)
        self.breaker = Breaker(self.res.redis, self.res.keys, self.settings, self._channel_state_changed)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Background work of a request (settle, publish) that must not be cancelled with the request."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def when_done(self, fut: asyncio.Future[Any], then: Callable[[], None]) -> None:
        """Run `then` once `fut` is done: background work of a request that needs no task of its own (a task
        costs several microseconds more, per request). Counted by `busy` and waited for by `drain`."""
        self._waiting.add(fut)

        def done(_: asyncio.Future[Any]) -> None:
            self._waiting.discard(fut)
            then()

        fut.add_done_callback(done)

    @property
    def busy(self) -> bool:
        """Some request's background work is still running."""
        return bool(self._tasks or self._waiting)

    async def drain(self, wait_s: float = 10.0) -> None:
        if self._tasks or self._waiting:
            await asyncio.wait([*self._tasks, *self._waiting], timeout=wait_s)

    @property
    def internal_headers(self) -> dict[str, str]:
        return {"x-internal-token": self.common.internal_token}

    # --- key snapshots ------------------------------------------------------------------------------------

    async def _key_from_redis(self, key_hash: str) -> bytes | None:
        assert self.res.redis is not None
        raw = await self.res.redis.get(self.res.keys.api_key(key_hash))
        return _as_bytes(raw)

    async def call_internal(self, method: bytes, url: str) -> tuple[int, bytes]:
        """One call to keys or billing: (status, body). Raises UpstreamError, TimeoutError or OSError when it
        cannot be made."""
        async with asyncio.timeout(INTERNAL_TIMEOUT_S):
            resp = await self.internal.request(method, url, self.internal_headers)
            return resp.status_code, await resp.aread()

    async def _key_from_keys(self, key_hash: str) -> bytes | None:
        try:
            status, body = await self.call_internal(b"GET", f"{self.common.keys_url}/internal/keys/{key_hash}")
        except (upstream_http.UpstreamError, TimeoutError, OSError) as exc:
            log.warning("keys service unreachable for a key lookup", extra={"error": repr(exc)})
            return None
        if status == 404:
            return None
        if status != 200:
            log.warning("keys service answered a key lookup with an error", extra={"status": status})
            return None
        return body

    # --- catalog ------------------------------------------------------------------------------------------

    async def load_catalog(self) -> None:
        """Redis first (keys writes it before publishing catalog.changed); else the keys service."""
        assert self.res.redis is not None
        raw: bytes | None = None
        with contextlib.suppress(Exception):
            raw = _as_bytes(await self.res.redis.get(self.res.keys.catalog()))
        if raw is None:
            try:
                status, body = await self.call_internal(b"GET", f"{self.common.keys_url}/internal/catalog")
                if status == 200:
                    raw = body
            except (upstream_http.UpstreamError, TimeoutError, OSError) as exc:
                log.warning("no catalog in redis and keys unreachable", extra={"error": repr(exc)})
        if raw is None:
            return
        catalog = cat.decode(raw)
        if catalog.version < self.catalog.catalog.version:
            return
        self.catalog = CatalogView.build(catalog, self.common.secret_key)
        log.info("catalog loaded", extra={"version": catalog.version, "channels": len(catalog.channels)})

    # --- billing ------------------------------------------------------------------------------------------

    async def load_wallet(self, account_id: str) -> bool:
        """Ask billing to load the wallet's balance into Redis (e.g. after Redis lost it)."""
        try:
            url = f"{self.common.billing_url}/internal/wallets/{account_id}/load"
            status, _ = await self.call_internal(b"POST", url)
        except (upstream_http.UpstreamError, TimeoutError, OSError) as exc:
            log.warning("billing unreachable for a wallet load", extra={"error": repr(exc)})
            return False
        return status == 200

    # --- events -------------------------------------------------------------------------------------------

    def _channel_state_changed(self, channel_id: str, state: str, reason: str) -> None:
        if self.res.publisher is not None:
            self.res.publisher.publish_nowait(ev.ChannelStateChanged(channel_id=channel_id, state=state, reason=reason))

    async def subscribe(self) -> None:
        """Core NATS subscriptions: every worker hears every key/account/catalog change (JetStream publishes
        are delivered to plain subscribers too)."""
        nc = self.res.nc
        assert nc is not None
        ns = self.common.namespace
        decode = msgspec.json.Decoder(ev.AnyEvent).decode

        async def on_message(msg: Msg) -> None:
            try:
                event = decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.error("malformed event on a cache subscription", extra={"subject": msg.subject})
                return
            if isinstance(event, ev.KeyChanged):
                self.keycache.key_changed(event.key, event.previous_hash)
            elif isinstance(event, ev.AccountChanged):
                self.keycache.account_changed(event.account_id)
            elif isinstance(event, ev.CatalogChanged):
                if event.version >= self.catalog.catalog.version:
                    await self.load_catalog()

        for etype in ("key.changed", "account.changed", "catalog.changed"):
            await nc.subscribe(subject(ns, etype), cb=on_message)

        # After a reconnect we may have missed events: forget everything cached and reload the catalog.
        async def reconnected() -> None:
            self.keycache.clear()
            await self.load_catalog()

        nc._reconnected_cb = reconnected  # nats-py keeps the callback here; there is no setter after connect


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # The client is created with decode_responses=False, so values are bytes; the union is the stubs' view.
    return value.encode() if isinstance(value, str) else value
