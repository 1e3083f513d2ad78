"""Webhook delivery: a JSON body signed with HMAC-SHA256 over `timestamp.body` (see WEBHOOKS.md).

Every attempt of one notification carries the same body and the same `Faregate-Delivery` id (also sent as
`Idempotency-Key`), with a fresh timestamp and signature, so a receiver de-duplicates a redelivery on the id.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import time
import urllib.parse
from collections.abc import Mapping

import httpx

from services.notifier.mailer import SendError

SIGNATURE_HEADER = "Faregate-Signature"
TOLERANCE_S = 300


async def refuse_private(url: str) -> None:
    """Refuse (permanently) a URL whose host resolves to a loopback, private or link-local address: the URL
    was checked when it was set, but a name can be pointed at an internal address later. (A name that changes
    its answer between this check and the request is not covered; an egress proxy is the complete answer.)"""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        raise SendError(f"webhook host {host!r} does not resolve") from None
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_global:
            raise SendError("webhook URL resolves to a private or local address", permanent=True)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, now: float | None = None,
           tolerance_s: int = TOLERANCE_S) -> bool:
    """What a receiver does (WEBHOOKS.md): recompute the MAC over `t.body`, compare in constant time, and
    refuse timestamps too far from its clock (a replayed old request)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    candidates = [v for k, v in (p.split("=", 1) for p in header.split(",")) if k == "v1"]
    return any(hmac.compare_digest(expected, c) for c in candidates)


def headers(secret: str, body: bytes, delivery_id: str, event_type: str, *,
            timestamp: int | None = None) -> Mapping[str, str]:
    t = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "User-Agent": "Faregate-Webhooks/1",
        SIGNATURE_HEADER: sign(secret, t, body),
        "Faregate-Delivery": delivery_id,
        "Idempotency-Key": delivery_id,
        "Faregate-Event": event_type,
    }


async def post(client: httpx.AsyncClient, url: str, secret: str, body: bytes, delivery_id: str,
               event_type: str, timeout_s: float) -> None:
    """Any 2xx is success; anything else (or no answer) is a retryable failure."""
    try:
        resp = await client.post(url, content=body, headers=headers(secret, body, delivery_id, event_type),
                                 timeout=timeout_s, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise SendError(f"webhook unreachable: {type(exc).__name__}") from None
    if not 200 <= resp.status_code < 300:
        raise SendError(f"webhook answered HTTP {resp.status_code}")
