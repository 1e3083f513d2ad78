"""The wallet balance for the dashboard when no billing event has told us one yet: ask billing.

Normally the balance comes from the newest usage.charged / wallet.credited event (no call on the dashboard's
path). An account whose wallet billing has never reported to us (a fresh seed, or events still in flight) is
looked up once per request through billing's wallet API, with the internal token; if billing does not answer
quickly, the dashboard shows no balance rather than waiting.
"""

from __future__ import annotations

import httpx
import msgspec


class _Wallet(msgspec.Struct):
    balance_micros: int


_decode = msgspec.json.Decoder(_Wallet).decode


async def from_billing(http: httpx.AsyncClient, billing_url: str, internal_token: str,
                       account_id: str) -> int | None:
    try:
        resp = await http.get(f"{billing_url.rstrip('/')}/v1/billing/wallet", timeout=2.0, headers={
            "X-Internal-Token": internal_token, "X-Account-Id": account_id, "X-Role": "user"})
        if resp.status_code != 200:
            return None
        return _decode(resp.content).balance_micros
    except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError):
        return None
