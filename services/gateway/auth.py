"""API-key authentication from an in-process cache.

Each worker holds the KeySnapshots it has seen in a dict keyed by the key's sha256. A miss reads Redis
(`{ns}:key:{hash}`, written by keys), and if Redis has nothing (or is down) asks keys over HTTP, which also
refills Redis. The cache has no TTL: it is corrected at once by `key.changed` / `account.changed` events (core
NATS, every worker hears every event), so a disabled key stops working everywhere within a message's latency.
Unknown keys are remembered as unknown for a few seconds, so a flood of bad keys costs neither Redis nor keys
anything.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from services.gateway.errors import InvalidKey, NotAllowed
from shared.events import KeySnapshot

log = logging.getLogger("faregate.gateway.auth")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_decode_snapshot = msgspec.json.Decoder(KeySnapshot).decode


@dataclass(frozen=True)
class CachedKey:
    snap: KeySnapshot
    networks: tuple[IPNetwork, ...]  # parsed once per snapshot
    expires_ts: float | None  # expires_at as a POSIX timestamp, for a cheap comparison per request


def cached(snap: KeySnapshot) -> CachedKey:
    nets = []
    for item in snap.ip_allow:
        try:
            nets.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            log.warning("ignoring malformed ip_allow entry", extra={"key_id": snap.key_id})
    return CachedKey(
        snap=snap, networks=tuple(nets), expires_ts=snap.expires_at.timestamp() if snap.expires_at else None
    )


# Fetchers return the snapshot JSON, or None when the source says the key is unknown; they raise when the
# source
# cannot be asked.
Fetch = Callable[[str], Awaitable[bytes | None]]


class KeyCache:
    def __init__(self, from_redis: Fetch, from_keys: Fetch, negative_ttl_s: float) -> None:
        self._from_redis = from_redis
        self._from_keys = from_keys
        self._negative_ttl = negative_ttl_s
        self._known: dict[str, CachedKey] = {}
        self._unknown: dict[str, float] = {}  # hash -> monotonic time until which it is known unknown
        self._generation = 0  # bumped by every invalidation, so a slow fill never overwrites a newer event

    def __len__(self) -> int:
        return len(self._known)

    async def get(self, key_hash: str) -> CachedKey | None:
        hit = self._known.get(key_hash)
        if hit is not None:
            return hit
        until = self._unknown.get(key_hash)
        if until is not None:
            if until > time.monotonic():
                return None
            del self._unknown[key_hash]
        return await self._fill(key_hash)

    async def _fill(self, key_hash: str) -> CachedKey | None:
        generation = self._generation
        raw: bytes | None = None
        try:
            raw = await self._from_redis(key_hash)
        except Exception as exc:  # Redis down: keys (backed by Postgres) can still answer
            log.warning("redis key lookup failed; asking keys", extra={"error": repr(exc)})
        if raw is None:
            raw = await self._from_keys(key_hash)
        if raw is None:
            self._unknown[key_hash] = time.monotonic() + self._negative_ttl
            return None
        entry = cached(_decode_snapshot(raw))
        if generation == self._generation:
            self._known[key_hash] = entry
        return entry

    # --- invalidation, from events ------------------------------------------------------------------------

    def key_changed(self, snap: KeySnapshot, previous_hash: str | None) -> None:
        self._generation += 1
        self._known[snap.key_hash] = cached(snap)
        self._unknown.pop(snap.key_hash, None)
        if previous_hash:
            # The rotated-out secret: re-read its (grace-limited) snapshot from Redis on next use.
            self._known.pop(previous_hash, None)

    def account_changed(self, account_id: str) -> None:
        self._generation += 1
        for h in [h for h, c in self._known.items() if c.snap.account_id == account_id]:
            del self._known[h]

    def clear(self) -> None:
        self._generation += 1
        self._known.clear()
        self._unknown.clear()


def check_key(entry: CachedKey | None, now: float | None = None) -> KeySnapshot:
    """401 with a message that says why, or the usable snapshot."""
    if entry is None:
        raise InvalidKey("Incorrect API key provided: no such key.")
    snap = entry.snap
    if snap.status == "deleted":
        raise InvalidKey("This API key has been deleted.")
    if snap.status != "active":
        raise InvalidKey("This API key is disabled.")
    if snap.account_status != "active":
        raise InvalidKey("The account this API key belongs to is disabled.")
    if entry.expires_ts is not None and entry.expires_ts <= (now or time.time()):
        raise InvalidKey("This API key has expired.")
    return snap


def check_ip(entry: CachedKey, client_ip: str) -> None:
    if not entry.networks:
        return
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        raise NotAllowed("Your IP address is not allowed to use this API key.") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for net in entry.networks:
        if addr.version == net.version and addr in net:
            return
    raise NotAllowed("Your IP address is not allowed to use this API key.")


def networks(items: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """Parse addresses/CIDRs once (configuration: a malformed entry is an error, not skipped)."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())


def _within(address: str, nets: tuple[IPNetwork, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in nets)


def client_address(peer: str, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]) -> str:
    """The client's address: the peer's, or behind trusted proxies the right-most untrusted X-Forwarded-For
    entry (entries left of it could have been written by the client itself)."""
    if not trusted or not forwarded_for or not _within(peer, trusted):
        return peer
    for hop in reversed(forwarded_for.split(",")):
        hop = hop.strip()
        if hop and not _within(hop, trusted):
            return hop
    return peer
