"""Sender loops: claim one due outbox row, send it, record the outcome. Safe with any number of replicas.

The sequence per row, and what a kill at each point does:
  1. claim (one short transaction): `FOR UPDATE SKIP LOCKED`, set a lease `claimed_until = now() + lease_s`
     and a fresh claim token. Killed here: the claim either committed (the row waits for the lease to end,
     then is claimed again) or did not (nothing happened).
  2. send, bounded by a total timeout well inside the lease, so no other sender can claim the row meanwhile.
  3. mark sent (one short transaction, only while the claim token is still ours).
The one residual window: killed after the SMTP server or webhook receiver accepted the message and before
step 3 committed (a few milliseconds: one UPDATE). The row is sent again after its lease. The copy is
identical where it matters: an e-mail carries the same Message-ID, a webhook the same `Faregate-Delivery` /
`Idempotency-Key` and body, all derived from the outbox key, so a receiver that de-duplicates on them sees it
once. Redelivered events, a restart between sending and acking, and concurrent replicas cannot cause a second
send at all: the outbox's unique key and the lease exclude them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
from prometheus_client import Counter

from services.notifier import mailer, repo, templating, webhooks
from services.notifier.config import NotifierSettings
from services.notifier.mailer import SendError
from services.notifier.notifications import CHANNELS, delivery_id
from shared import crypto

log = logging.getLogger("faregate.notifier.sender")

DELIVERIES = Counter("faregate_notifier_deliveries_total", "Send attempts by outcome",
                     ["channel", "outcome"])  # outcome: sent | retry | failed | cancelled

_json = msgspec.json.Encoder()


def backoff_s(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: about base * 2^(attempt-1), capped, scaled by a random 0.5-1.0 so that
    many deliveries failing together do not come back together."""
    exp = min(cap, base * (2 ** min(attempt - 1, 30)))
    return float(exp * random.uniform(0.5, 1.0))


class Sender:
    def __init__(self, pool: asyncpg.Pool, settings: NotifierSettings, secret_key: str,
                 http: httpx.AsyncClient) -> None:
        self.pool = pool
        self.settings = settings
        self.secret_key = secret_key
        self.http = http
        self.wakeups = {channel: asyncio.Event() for channel in CHANNELS}

    def wake(self) -> None:
        for event in self.wakeups.values():
            event.set()

    def workers(self, channel: str) -> int:
        return self.settings.email_workers if channel == "email" else self.settings.webhook_workers

    async def run(self, channel: str, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._worker(channel, stop) for _ in range(self.workers(channel))))

    async def _worker(self, channel: str, stop: asyncio.Event) -> None:
        wakeup = self.wakeups[channel]
        while not stop.is_set():
            try:
                did = await self.run_once(channel)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Postgres away: nothing can be claimed or recorded; try again shortly.
                log.warning("sender cannot reach the outbox", extra={"channel": channel, "error": repr(exc)})
                did = False
                await asyncio.sleep(self.settings.poll_interval_s)
            except Exception:
                # Never let one surprise stop this channel's sending for good; the row's lease brings it back.
                log.exception("sender error", extra={"channel": channel})
                did = False
                await asyncio.sleep(self.settings.poll_interval_s)
            if not did:
                wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), self.settings.poll_interval_s)

    async def run_once(self, channel: str) -> bool:
        """Claim and deliver one due row; False when there was none."""
        token = secrets.token_hex(8)
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(repo.CLAIM_DUE, channel, 1, self.settings.lease_s, token)
        if row is None:
            return False
        await self.deliver(dict(row), token)
        return True

    async def deliver(self, row: dict[str, Any], token: str) -> None:
        payload = msgspec.json.decode(row["payload"]) if isinstance(row["payload"], str) else row["payload"]
        destination: str | None = None
        try:
            if row["channel"] == "email":
                destination = await self._send_email(row, payload)
            else:
                destination = await self._send_webhook(row, payload)
        except _Cancelled as exc:
            await self._record(repo.MARK_CANCELLED, row, token, str(exc))
            DELIVERIES.labels(row["channel"], "cancelled").inc()
            return
        except _NoAddress as exc:
            await self._no_address(row, token, str(exc))
            return
        except SendError as exc:
            await self._failed_attempt(row, token, exc, exc.destination)
            return
        except Exception as exc:
            # A bug or an unexpected answer while preparing or sending this one row (say, a secret sealed
            # under an old key): count it as a failed attempt of this row, so it backs off and ends up visibly
            # failed, and keep the sender running for every other row.
            log.exception("unexpected error delivering a notification", extra={"outbox_id": row["id"]})
            await self._failed_attempt(row, token, SendError(f"internal error: {type(exc).__name__}"), None)
            return
        await self._record(repo.MARK_SENT, row, token, destination)
        DELIVERIES.labels(row["channel"], "sent").inc()
        log.info("notification sent", extra={"outbox_id": row["id"], "kind": row["kind"],
                                             "channel": row["channel"], "attempt": row["attempts"]})

    async def _record(self, sql: str, row: Mapping[str, Any], token: str, *args: object) -> None:
        async with self.pool.acquire() as conn:
            status = await conn.execute(sql, row["id"], token, *args)
        if status.endswith(" 0"):
            # Our lease ran out and another sender owns the row now; its outcome stands.
            log.warning("lease lost before recording the outcome", extra={"outbox_id": row["id"]})

    async def _failed_attempt(self, row: Mapping[str, Any], token: str, exc: SendError,
                              destination: str | None) -> None:
        s = self.settings
        limit = s.email_max_attempts if row["channel"] == "email" else s.webhook_max_attempts
        if exc.permanent or row["attempts"] >= limit:
            await self._record(repo.MARK_FAILED, row, token, exc.message, destination)
            DELIVERIES.labels(row["channel"], "failed").inc()
            log.error("notification failed for good",
                      extra={"outbox_id": row["id"], "kind": row["kind"], "attempts": row["attempts"],
                             "error": exc.message})
            return
        delay = backoff_s(row["attempts"], self.settings.backoff_base_s, self.settings.backoff_max_s)
        await self._record(repo.MARK_RETRY, row, token, delay, exc.message, destination)
        DELIVERIES.labels(row["channel"], "retry").inc()
        log.warning("notification will be retried",
                    extra={"outbox_id": row["id"], "kind": row["kind"], "attempt": row["attempts"],
                           "delay_s": round(delay, 1), "error": exc.message})

    async def _no_address(self, row: Mapping[str, Any], token: str, message: str) -> None:
        # The account's account.registered may simply not have been consumed yet (another stream): wait for
        # it, without spending the row's attempts, for a while; then give up visibly.
        created: datetime = row["created_at"]
        if datetime.now(UTC) - created > timedelta(seconds=self.settings.address_wait_s):
            await self._record(repo.MARK_FAILED, row, token, message, None)
            DELIVERIES.labels(row["channel"], "failed").inc()
            return
        delay = min(30.0, self.settings.poll_interval_s * 5)
        await self._record(repo.MARK_WAITING, row, token, delay, message)

    # --- channels -------------------------------------------------------------------------------------------

    async def _address(self, recipient: str) -> str:
        kind, _, value = recipient.partition(":")
        if kind in ("address", "admin"):
            return value
        async with self.pool.acquire() as conn:
            prefs = await conn.fetchrow(repo.GET_PREFS, value)
            if prefs is not None and prefs["email"]:
                return str(prefs["email"])
            address = await conn.fetchval(repo.GET_RECIPIENT, value)
        if not address:
            raise _NoAddress("no e-mail address known for this account yet")
        return str(address)

    async def _send_email(self, row: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
        address = await self._address(row["recipient"])
        variables = dict(payload["vars"])
        if row["sealed"]:
            variables.update(msgspec.json.decode(crypto.unseal(row["sealed"], self.secret_key)))
        try:
            rendered = templating.render(row["kind"], variables)
        except (KeyError, FileNotFoundError, ValueError) as exc:
            raise SendError(f"template {row['kind']} cannot be rendered: {exc!r}", permanent=True) from None
        msg = mailer.build_message(self.settings, to=address, rendered=rendered,
                                   delivery_id=_delivery_id(row))
        try:
            async with asyncio.timeout(self.settings.smtp_timeout_s):
                await mailer.send(self.settings, msg)
        except TimeoutError:
            raise SendError("SMTP timed out") from None
        return address

    async def _webhook_target(self, recipient: str) -> tuple[str, str]:
        if recipient == "admin:webhook":
            if not self.settings.admin_webhook_url:
                raise _Cancelled("admin webhook no longer configured")
            return self.settings.admin_webhook_url, self.settings.admin_webhook_secret
        account_id = recipient.partition(":")[2]
        async with self.pool.acquire() as conn:
            prefs = await conn.fetchrow(repo.GET_PREFS, account_id)
        if prefs is None or not prefs["webhook_url"] or not prefs["webhook_secret"]:
            raise _Cancelled("the account removed its webhook")
        url = str(prefs["webhook_url"])
        if not self.settings.webhook_allow_private:
            await webhooks.refuse_private(url)
        return url, crypto.unseal(prefs["webhook_secret"], self.secret_key)

    async def _send_webhook(self, row: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
        url, secret = await self._webhook_target(row["recipient"])
        delivery = _delivery_id(row)
        body = webhook_body(delivery, row["kind"], row["event_type"], row["created_at"], payload["data"])
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                await webhooks.post(self.http, url, secret, body, delivery, row["event_type"],
                                    self.settings.webhook_timeout_s)
        except TimeoutError:
            raise SendError("webhook timed out", destination=url) from None
        except SendError as exc:
            exc.destination = url
            raise
        return url


def webhook_body(delivery_id: str, kind: str, event_type: str, created_at: datetime,
                 data: Mapping[str, Any]) -> bytes:
    """The same bytes on every attempt of one delivery."""
    return _json.encode({"id": delivery_id, "type": kind, "event_type": event_type,
                         "created_at": created_at.astimezone(UTC).isoformat(), "data": data})


def _delivery_id(row: Mapping[str, Any]) -> str:
    return delivery_id(row["dedupe_key"], row["channel"], row["recipient"])


class _Cancelled(Exception):
    """Nothing to send to any more (webhook removed): recorded as cancelled, not failed."""


class _NoAddress(Exception):
    """The account's address is not known yet."""
