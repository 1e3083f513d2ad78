"""Settings of the gateway service (environment: FAREGATE_GATEWAY_*)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from shared.config import ServerSettings, register


@register("GATEWAY")
class GatewaySettings(ServerSettings, frozen=True, kw_only=True):
    port: int = 8100
    # A streaming answer may run for minutes: let it finish on SIGTERM (the pod's grace is 130 s, preStop 10 s).
    shutdown_grace_s: int = 120
    # Largest request body accepted; bigger ones get 413 in the caller's dialect.
    max_body_bytes: int = 16 * 1024 * 1024
    # Upstream timeouts: TCP/TLS connect, wait for the first byte of the answer, and silence between stream
    # chunks.
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float = 120.0
    idle_timeout_s: float = 60.0
    # Retries before the first byte reaches the client: at most this many upstream attempts in all, within
    # this
    # much wall time (a next attempt is not started once the budget is spent).
    max_attempts: int = 4
    retry_budget_s: float = 30.0
    # A Retry-After longer than this from an upstream is not waited for: the channel is skipped instead.
    max_retry_after_wait_s: float = 2.0
    # Unknown API keys are remembered as unknown this long, so a flood of bad keys does not reach Redis/keys.
    negative_cache_s: float = 5.0
    # Circuit breaker (shared by every gateway pod through Redis): over a sliding window of
    # `breaker_window_s`,
    # at least `breaker_min_requests` attempts of which `breaker_error_ratio` failed open the channel for
    # `breaker_cooldown_s` (doubling per failed probe up to `breaker_max_cooldown_s`), then one probe goes
    # through.
    breaker_window_s: int = 60
    breaker_min_requests: int = 5
    breaker_error_ratio: float = 0.5
    breaker_cooldown_s: float = 15.0
    breaker_max_cooldown_s: float = 300.0
    # How often each worker re-reads the shared breaker states from Redis.
    breaker_refresh_s: float = 1.0
    # Concurrency per account (0 = none); per key it is the key's own concurrency_limit (default 100).
    account_concurrency_limit: int = 0
    account_rpm_limit: int = 0
    account_tpm_limit: int = 0
    # Proxies in front of the gateway (addresses or CIDR ranges, comma-separated), e.g. the ingress: when
    # the peer is one of them, the client's address for IP allow-lists is the right-most X-Forwarded-For
    # entry that is not itself a trusted proxy. Empty: the peer is the client (X-Forwarded-For is ignored).
    trusted_proxies: tuple[str, ...] = ()
    # Start the upstream call while the admission (limits, reservation) is on its way to Redis, when this worker
    # knows of no limit near: the client waits one round trip instead of two. A refusal that comes back then
    # cancels an upstream call already made (the client is not charged; the provider may bill its start).
    overlap_admission: bool = True
    # Lease a busy key's spending to the worker (an amount of the wallet and slots of the key's concurrency limit,
    # renewed with the record batch), so its requests are admitted without a Redis round trip each; only keys with
    # no rate limit, spending cap or allowance (services/gateway/leases.py).
    lease_admission: bool = True
    # How long an answered request waits to be settled in Redis and published as a usage event when no admission
    # that is not overlapped comes first to take it along: answers within this window go out in one write.
    record_delay_s: float = 0.02
    # granian's interface: "rsgi" (its own: an answer handed over in one call; ~15% less CPU a request) or "asgi".
    server_interface: Literal["rsgi", "asgi"] = "rsgi"
    # Keep-alive pool to upstreams, per worker.
    max_upstream_connections: int = 1000

    def __post_init__(self) -> None:
        for item in self.trusted_proxies:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                name = "FAREGATE_GATEWAY_TRUSTED_PROXIES"
                raise ValueError(f"{name}: {item!r} is not an address or CIDR") from None
