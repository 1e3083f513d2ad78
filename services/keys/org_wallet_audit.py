"""`keys-org-wallet`: an organisation's wallet credits (top-ups, codes, refunds, adjustments, plans) in its
audit log, from billing's wallet.credited, so the org's admins see wallet changes beside membership changes.

The event names no person (billing credits a wallet, whoever paid), so the entry's actor is "billing" and its
reference (payment, code batch, refunded event) says where the money came from.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from nats.aio.msg import Msg

from services.keys import repo
from services.keys.context import Ctx
from shared import db
from shared import events as ev
from shared.bus import ConsumerSpec

# Few, small events: a modest batch; retried until Postgres takes them (an audit entry must not be lost).
ORG_WALLET = ConsumerSpec(
    durable="keys-org-wallet",
    stream="BILLING",
    filter_subjects=("wallet.credited",),
    ack_wait_s=30.0,
    max_deliver=-1,
    max_ack_pending=1_000,
    batch=100,
    backoff_s=(1, 2, 5, 10, 30, 60),
)

_json = msgspec.json.Encoder()


async def apply(ctx: Ctx, batch: Sequence[ev.AnyEvent]) -> int:
    """Claim the batch and audit the new credits of organisations' wallets; returns how many were written."""
    written = 0
    async with ctx.pool.acquire() as conn, conn.transaction():
        new = await db.claim_events(conn, "keys", ORG_WALLET.durable, [e.event_id for e in batch])
        for e in batch:
            if e.event_id not in new or not isinstance(e, ev.WalletCredited):
                continue
            new.discard(e.event_id)
            detail = {"kind": e.kind, "amount_micros": e.amount_micros, "bonus_micros": e.bonus_micros,
                      "paid_micros": e.paid_micros, "balance_micros": e.balance_micros,
                      "reference": e.reference, "reason": e.reason}
            status = await conn.execute(repo.INSERT_WALLET_AUDIT, e.account_id, e.event_id,
                                        _json.encode(detail).decode(), e.occurred_at)
            written += status.endswith(" 1")
    return written


async def handle(ctx: Ctx, batch: Sequence[tuple[Msg, ev.AnyEvent]]) -> None:
    await apply(ctx, [e for _, e in batch])
