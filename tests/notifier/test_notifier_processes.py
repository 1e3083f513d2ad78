"""Real `faregate notifier` processes: one SIGKILLed in the middle of a batch, and two running at once.
Neither may send any notification twice."""

from __future__ import annotations

import asyncio
import collections
import secrets

import httpx
import msgspec

from shared import config, events
from shared.config import CommonSettings
from shared.runtime import Resources
from tests import procs
from tests.notifier.receivers import Receiver, SmtpServer, env_for, until


def references(mails: list[object]) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for m in mails:
        for line in m.text.splitlines():  # type: ignore[attr-defined]
            if line.strip().startswith("Payment reference:"):
                out[line.split(":", 1)[1].strip()] += 1
    return out


async def publish_topups(res: Resources, account: str, n: int, tag: str) -> None:
    assert res.publisher
    for i in range(n):
        await res.publisher.publish(
            events.WalletCredited(
                account_id=account,
                kind="topup",
                amount_micros=1_000_000 + i,
                paid_micros=1_000_000 + i,
                balance_micros=5_000_000,
                reference=f"{tag}-{i}",
            )
        )


async def test_notifier_killed_mid_batch_sends_each_notification_once(
    resources: Resources, smtp: SmtpServer
) -> None:
    assert resources.publisher
    account, address = f"acct-{secrets.token_hex(4)}", f"kill-{secrets.token_hex(4)}@example.com"
    await resources.publisher.publish(events.AccountRegistered(account_id=account, email=address))
    await publish_topups(resources, account, 8, "kill")
    # The server accepts three messages, then keeps the fourth waiting: the notifier is killed mid-send.
    smtp.hold_after(3, address)
    env = env_for(smtp, email_workers=1, lease_s=4.0)
    first = await asyncio.to_thread(procs.start, "notifier", env)
    try:
        await until(smtp.holding.is_set, timeout=30, what="the fourth message to be in flight")
    finally:
        first.kill()
    smtp.release()  # the in-flight message is refused: it was never accepted
    assert len(smtp.to(address)) == 3

    second = await asyncio.to_thread(procs.start, "notifier", env)
    try:
        await until(lambda: len(smtp.to(address)) >= 9, timeout=30, what="the rest after the restart")
        await asyncio.sleep(2.0)  # leases of the killed process have ended: a duplicate would be here by now
    finally:
        second.stop()
    mails = smtp.to(address)
    assert len(mails) == 9
    assert references(mails) == {f"kill-{i}": 1 for i in range(8)}
    assert sum(m.subject == "Welcome to Faregate" for m in mails) == 1
    assert len({m.message_id for m in mails}) == 9


async def test_notifier_killed_while_consuming_sends_each_notification_once(
    resources: Resources, smtp: SmtpServer
) -> None:
    """SIGKILL while the consumer works through a backlog: batches committed and acked, maybe one committed
    but not acked, maybe one fetched and not committed. The restarted notifier (after JetStream's ack_wait)
    finishes the backlog and every notification goes out once."""
    assert resources.publisher and resources.pool
    account, address = f"acct-{secrets.token_hex(4)}", f"backlog-{secrets.token_hex(4)}@example.com"
    await resources.publisher.publish(events.AccountRegistered(account_id=account, email=address))
    await publish_topups(resources, account, 250, "backlog")
    smtp.hold_after(
        0, address
    )  # nothing is accepted while the first process runs: this kill is about consuming
    env = env_for(smtp, email_workers=4, lease_s=4.0)
    count = "SELECT count(*) FROM notifier.outbox WHERE account_id = $1"
    first = await asyncio.to_thread(procs.start, "notifier", env)
    try:
        for _ in range(600):
            if await resources.pool.fetchval(count, account):
                break
            await asyncio.sleep(0.01)
    finally:
        first.kill()
    queued_at_kill = await resources.pool.fetchval(count, account)
    smtp.release()
    assert smtp.to(address) == []

    second = await asyncio.to_thread(procs.start, "notifier", env)
    try:
        await until(lambda: len(smtp.to(address)) >= 251, timeout=60, what="the whole backlog")
        await asyncio.sleep(2.0)
    finally:
        second.stop()
    mails = smtp.to(address)
    assert len(mails) == 251, f"{len(mails)} mails; {queued_at_kill} of 251 were queued at the kill"
    assert references(mails) == {f"backlog-{i}": 1 for i in range(250)}
    assert len({m.message_id for m in mails}) == 251


async def test_two_notifiers_at_once_never_double_send(
    resources: Resources, smtp: SmtpServer, receiver: Receiver
) -> None:
    assert resources.publisher
    common = config.load(CommonSettings)
    account, address = f"acct-{secrets.token_hex(4)}", f"pair-{secrets.token_hex(4)}@example.com"
    env = env_for(smtp, email_workers=4, webhook_workers=4)
    smtp.delay_s = 0.05
    a, b = await asyncio.gather(
        asyncio.to_thread(procs.start, "notifier", env), asyncio.to_thread(procs.start, "notifier", env)
    )
    try:
        async with httpx.AsyncClient() as http:
            resp = await http.put(
                f"{a.url}/api/notifications/preferences",
                json={"webhook_url": receiver.url},
                headers={"X-Internal-Token": common.internal_token, "X-Account-Id": account},
            )
            assert resp.status_code == 200, resp.text
        await resources.publisher.publish(events.AccountRegistered(account_id=account, email=address))
        await publish_topups(resources, account, 30, "pair")
        await until(
            lambda: len(smtp.to(address)) >= 31 and len(receiver.hooks) >= 30,
            timeout=60,
            what="every mail and webhook",
        )
        await asyncio.sleep(2.0)
    finally:
        a.stop()
        b.stop()
    mails = smtp.to(address)
    assert len(mails) == 31
    assert references(mails) == {f"pair-{i}": 1 for i in range(30)}
    assert len(receiver.hooks) == 30
    refs = collections.Counter(msgspec.json.decode(h.body)["data"]["reference"] for h in receiver.hooks)
    assert refs == {f"pair-{i}": 1 for i in range(30)}
    # Both processes took part (each logs what it sent), so the test did exercise concurrent senders.
    assert "notification sent" in a.log() and "notification sent" in b.log()
