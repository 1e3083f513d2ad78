"""Redis: the client factory and every key name used across services, in one place.

Key layout (all under the namespace prefix):
  {ns}:key:{sha256}              KeySnapshot JSON        written by keys, read by gateways on a cache miss
  {ns}:catalog                   catalog snapshot JSON   written by keys, read by gateways
  {ns}:wallet:{account_id}       hash: balance (settled, micro-USD, written by billing),
                                       reserved (sum of open reservations, gateway),
                                       pending (actual cost of finished requests not yet debited)
  {ns}:quota:{key_id}            hash: used, reserved, pending (same shape, against the key's quota cap)
  {ns}:res:{reservation_id}      one open reservation (for expiry of leaked reservations)
  {ns}:rl:...                    rate-limit windows and concurrency counters (gateway)
  {ns}:cb:{channel_id}           circuit-breaker state (gateway)
"""

from __future__ import annotations

import redis.asyncio as aioredis


def client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url, decode_responses=False, health_check_interval=30, socket_connect_timeout=2, socket_timeout=2
    )


class Keys:
    """Key names for one namespace."""

    def __init__(self, namespace: str) -> None:
        self.ns = namespace

    def api_key(self, key_hash: str) -> str:
        return f"{self.ns}:key:{key_hash}"

    def catalog(self) -> str:
        return f"{self.ns}:catalog"

    def wallet(self, account_id: str) -> str:
        return f"{self.ns}:wallet:{account_id}"

    def quota(self, key_id: str) -> str:
        return f"{self.ns}:quota:{key_id}"

    def reservation(self, reservation_id: str) -> str:
        return f"{self.ns}:res:{reservation_id}"

    def leases(self, account_id: str) -> str:
        return f"{self.ns}:leases:{account_id}"

    def rate(self, scope: str, ident: str, window: str) -> str:
        return f"{self.ns}:rl:{scope}:{ident}:{window}"

    def breaker(self, channel_id: str) -> str:
        return f"{self.ns}:cb:{channel_id}"
