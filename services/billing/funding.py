"""Everything that puts money into (or, for admins, takes it out of) a wallet: top-ups through a payment
provider, redemption codes, plans, admin adjustments and refunds. Each is one transaction that posts to the
ledger; after commit the new spendable balance goes to Redis and the receipt event is published.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from services.billing import ledger, repo, wallets
from services.billing.config import BillingSettings
from services.billing.guard import BillingGuard
from services.billing.payments import PaymentNotice, PaymentProvider
from shared import events as ev
from shared.bus import Publisher
from shared.events import new_id
from shared.money import parse_usd
from shared.web import Conflict, NotFound, ServiceError

log = logging.getLogger("faregate.billing.funding")

_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: codes get typed by hand


class PaymentRequired(ServiceError):
    status = 402
    code = "insufficient_balance"


class Gone(ServiceError):
    status = 410
    code = "gone"


def code_hash(code: str) -> str:
    return hashlib.sha256(code.strip().upper().replace("-", "").encode()).hexdigest()


def new_code() -> str:
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(16))  # 80 bits
    return "-".join(raw[i:i + 4] for i in range(0, 16, 4))


@dataclass
class Funding:
    pool: asyncpg.Pool
    guard: BillingGuard
    publisher: Publisher | None
    settings: BillingSettings
    provider: PaymentProvider

    # --- the common tail of every balance change ----------------------------------------------------------

    async def _after(self, posted: wallets.Posted | None, *receipts: ev.Event) -> None:
        if posted is None:
            return
        try:
            await self.guard.sync([(posted.account_id, posted.spendable, posted.version)])
        except Exception:
            # The credit is committed; the gateway keeps the older (lower) balance until the next write for
            # this wallet (a debit, a credit, a load or a restart's hydration), which carries a newer version.
            log.exception("could not publish a balance to Redis", extra={"account_id": posted.account_id})
        if self.publisher is not None:
            for e in (*receipts, posted.low):
                if e is not None:
                    await self.publisher.publish(e)

    async def post(self, account_id: str, entry: wallets.Entry,
                   receipt_kind: str | None = None) -> wallets.Posted | None:
        """Post one entry in its own transaction; with `receipt_kind`, publish a WalletCredited receipt."""
        async with self.pool.acquire() as conn, conn.transaction():
            posted = await wallets.post(conn, account_id, [entry],
                                        default_threshold=self.settings.low_balance_default_micros)
        receipt = None
        if posted is not None and receipt_kind:
            receipt = ev.WalletCredited(
                event_id=wallets.derived_id(entry.event_id, "credited"), account_id=account_id,
                kind=receipt_kind,
                amount_micros=entry.amount, bonus_micros=entry.bonus, paid_micros=entry.paid,
                balance_micros=posted.balance, reference=entry.reference, reason=entry.reason)
        await self._after(posted, *([receipt] if receipt else []))
        return posted

    # --- top-ups -------------------------------------------------------------------------------------------

    async def bonus_tiers(self) -> list[tuple[int, int]]:
        """Admin-set tiers if any were set (possibly none at all), else the configured ones."""
        async with self.pool.acquire() as conn:
            raw = await conn.fetchval(repo.GET_OPTION, "bonus_tiers")
        if raw is None:
            return ledger.parse_tiers(self.settings.bonus_tiers)
        return sorted((int(m), int(p)) for m, p in msgspec.json.decode(raw))

    async def set_bonus_tiers(self, tiers: list[tuple[int, int]]) -> None:
        for minimum, percent in tiers:
            if minimum <= 0 or not 0 <= percent <= 100:
                raise ServiceError("a tier needs a positive minimum and a percent from 0 to 100",
                                   field="tiers")
        async with self.pool.acquire() as conn:
            await conn.execute(repo.SET_OPTION, "bonus_tiers", msgspec.json.encode(sorted(tiers)).decode())

    def check_amount(self, amount_micros: int) -> None:
        lo, hi = parse_usd(self.settings.topup_min_usd), parse_usd(self.settings.topup_max_usd)
        if not lo <= amount_micros <= hi:
            raise ServiceError(f"amount must be between ${lo // 1_000_000} and ${hi // 1_000_000}",
                               code="amount_out_of_range", field="amount_micros")
        if amount_micros % 10_000:
            raise ServiceError("amount must be whole cents", code="invalid_amount", field="amount_micros")

    async def start_payment(self, account_id: str, amount_micros: int, *, purpose: str = "topup",
                            plan_id: str | None = None) -> dict[str, Any]:
        bonus = 0
        description = "Faregate balance top-up"
        if purpose == "plan":
            plan = await self.plan(plan_id or "")
            amount_micros = plan["price_micros"]
            description = f"Faregate plan: {plan['name']}"
            if amount_micros < 10_000 or amount_micros % 10_000:
                raise ServiceError("this plan cannot be paid by card; buy it from the balance",
                                   code="invalid_amount")
        else:
            self.check_amount(amount_micros)
            bonus = ledger.bonus_for(amount_micros, await self.bonus_tiers())
        payment_id = new_id()
        async with self.pool.acquire() as conn:
            await conn.execute(repo.INSERT_PAYMENT, payment_id, account_id, self.provider.name, purpose,
                               plan_id, amount_micros, bonus)
        checkout = await self.provider.create_checkout(payment_id, amount_micros, description)
        async with self.pool.acquire() as conn:
            await conn.execute(repo.SET_PAYMENT_CHECKOUT, payment_id, checkout.provider_ref, checkout.url)
        return await self.payment(payment_id)

    async def payment(self, payment_id: str, account_id: str | None = None) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(repo.GET_PAYMENT, payment_id)
        if row is None or (account_id is not None and row["account_id"] != account_id):
            raise NotFound("no such payment")
        return dict(row)

    async def complete_payment(self, notice: PaymentNotice) -> bool:
        """Credit a verified payment once. True if this call credited it; False if it was already credited."""
        async with self.pool.acquire() as conn, conn.transaction():
            pay = await conn.fetchrow(repo.GET_PAYMENT + " FOR UPDATE", notice.payment_id)
            if pay is None:
                raise NotFound("no such payment")
            if pay["status"] == "paid":
                return False
            if not notice.paid:  # the checkout expired unpaid: nothing to credit, ever
                await conn.execute(repo.MARK_FAILED, notice.payment_id)
                return False
            if notice.amount_micros != pay["amount_micros"]:
                raise ServiceError("paid amount does not match the payment", code="amount_mismatch")
            await conn.execute(repo.MARK_PAID, notice.payment_id)
            threshold = self.settings.low_balance_default_micros
            event_id = wallets.derived_id("payment", pay["payment_id"])
            if pay["purpose"] == "plan":
                plan = await self._plan(conn, pay["plan_id"])
                grant_id, expires = await self._grant(conn, pay["account_id"], plan,
                                                      reference=pay["payment_id"])
                posted = await wallets.post(conn, pay["account_id"], [wallets.Entry(
                    kind="plan", amount=0, event_id=event_id, reference=grant_id, paid=pay["amount_micros"],
                    reason=f"plan {plan['name']} paid by {pay['provider']}")], default_threshold=threshold)
                receipt: ev.Event = self._plan_receipt(event_id, pay["account_id"], plan, grant_id, expires,
                                                       pay["amount_micros"], posted)
            else:
                entry = wallets.Entry(kind="topup", amount=pay["amount_micros"] + pay["bonus_micros"],
                                      event_id=event_id, reference=pay["payment_id"],
                                      bonus=pay["bonus_micros"], paid=pay["amount_micros"],
                                      reason=f"top-up via {pay['provider']}")
                posted = await wallets.post(conn, pay["account_id"], [entry], default_threshold=threshold)
                receipt = ev.WalletCredited(
                    event_id=wallets.derived_id(event_id, "credited"), account_id=pay["account_id"],
                    kind="topup",
                    amount_micros=entry.amount, bonus_micros=entry.bonus, paid_micros=entry.paid,
                    balance_micros=posted.balance if posted else 0, reference=pay["payment_id"])
        await self._after(posted, receipt)
        return posted is not None

    # --- codes ---------------------------------------------------------------------------------------------

    async def generate_codes(self, count: int, amount_micros: int, expires_at: datetime) -> tuple[str,
                                                                                                  list[str]]:
        if not 1 <= count <= 10_000:
            raise ServiceError("count must be between 1 and 10000", field="count")
        if amount_micros <= 0:
            raise ServiceError("amount must be positive", field="amount_micros")
        if expires_at <= wallets.utcnow():
            raise ServiceError("expiry must be in the future", field="expires_at")
        batch_id = new_id()
        codes = [new_code() for _ in range(count)]
        async with self.pool.acquire() as conn:
            await conn.execute(repo.INSERT_CODES, [code_hash(c) for c in codes], batch_id, amount_micros,
                               expires_at)
        return batch_id, codes

    async def redeem(self, account_id: str, code: str) -> wallets.Posted:
        h = code_hash(code)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(repo.REDEEM_CODE, h, account_id)
            if row is None:
                state = await conn.fetchrow(repo.CODE_STATE, h)
                if state is None:
                    raise NotFound("no such code", code="invalid_code")
                if state["redeemed_at"] is not None:
                    raise Conflict("this code was already redeemed", code="code_redeemed")
                raise Gone("this code has expired", code="code_expired")
            entry = wallets.Entry(kind="code", amount=row["amount_micros"],
                                  event_id=wallets.derived_id("code", h),
                                  reference=row["batch_id"], reason="redemption code")
            posted = await wallets.post(conn, account_id, [entry],
                                        default_threshold=self.settings.low_balance_default_micros)
        assert posted is not None  # the code row changed, so this entry cannot have been posted before
        await self._after(posted, ev.WalletCredited(
            event_id=wallets.derived_id(entry.event_id, "credited"), account_id=account_id, kind="code",
            amount_micros=entry.amount, balance_micros=posted.balance, reference=row["batch_id"]))
        return posted

    # --- plans ---------------------------------------------------------------------------------------------

    async def _plan(self, conn: asyncpg.Connection, plan_id: str) -> asyncpg.Record:
        plan = await conn.fetchrow(repo.GET_PLAN, plan_id)
        if plan is None:
            raise NotFound("no such plan")
        return plan

    async def plan(self, plan_id: str) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            plan = await self._plan(conn, plan_id)
        if not plan["active"]:
            raise NotFound("this plan is no longer sold")
        return plan

    async def _grant(self, conn: asyncpg.Connection, account_id: str, plan: asyncpg.Record,
                     reference: str) -> tuple[str, datetime]:
        grant_id = new_id()
        expires = wallets.utcnow() + timedelta(days=plan["validity_days"])
        await conn.execute(repo.INSERT_GRANT, grant_id, account_id, plan["plan_id"], plan["name"],
                           plan["credit_micros"], list(plan["models"]), expires, plan["price_micros"],
                           reference)
        return grant_id, expires

    def _plan_receipt(self, event_id: str, account_id: str, plan: asyncpg.Record, grant_id: str,
                      expires: datetime, paid: int, posted: wallets.Posted | None) -> ev.PlanPurchased:
        return ev.PlanPurchased(event_id=wallets.derived_id(event_id, "plan"), account_id=account_id,
                                plan_id=plan["plan_id"], plan_name=plan["name"], paid_micros=paid,
                                credit_micros=plan["credit_micros"], expires_at=expires, reference=grant_id,
                                balance_micros=posted.balance if posted else 0)

    async def buy_plan_with_balance(self, account_id: str, plan_id: str,
                                    idempotency_key: str | None = None) -> dict[str, Any]:
        plan = await self.plan(plan_id)
        event_id = wallets.derived_id("plan", account_id, idempotency_key or new_id())
        async with self.pool.acquire() as conn, conn.transaction():
            wallet = (await wallets.lock(conn, [account_id]))[account_id]
            done = await conn.fetchrow(repo.LEDGER_BY_EVENT, event_id)
            if done is not None:
                return {"grant_id": done["reference"], "balance_micros": wallet["balance_micros"],
                        "repeated": True}
            if wallet["balance_micros"] < plan["price_micros"]:
                raise PaymentRequired("the balance does not cover this plan")
            grant_id, expires = await self._grant(conn, account_id, plan, reference=event_id)
            posted = await wallets.post(conn, account_id, [wallets.Entry(
                kind="plan", amount=-plan["price_micros"], event_id=event_id, reference=grant_id,
                paid=plan["price_micros"], reason=f"plan {plan['name']} bought from the balance")],
                default_threshold=self.settings.low_balance_default_micros)
        await self._after(posted, self._plan_receipt(event_id, account_id, plan, grant_id, expires,
                                                     plan["price_micros"], posted))
        assert posted is not None
        return {"grant_id": grant_id, "expires_at": expires, "balance_micros": posted.balance,
                "repeated": False}

    # --- admin ---------------------------------------------------------------------------------------------

    async def adjust(self, account_id: str, amount_micros: int, reason: str,
                     idempotency_key: str | None = None) -> wallets.Posted | None:
        if not reason.strip():
            raise ServiceError("an adjustment needs a reason", field="reason")
        if amount_micros == 0:
            raise ServiceError("amount must not be zero", field="amount_micros")
        event_id = wallets.derived_id("adjustment", account_id, idempotency_key or new_id())
        return await self.post(account_id, wallets.Entry(kind="adjustment", amount=amount_micros,
                                                         event_id=event_id, reason=reason), "adjustment")

    async def refund(self, usage_event_id: str | None, request_id: str | None, reason: str,
                     amount_micros: int | None = None) -> wallets.Posted | None:
        """Give back what a usage charge took from the wallet (at most once per charge)."""
        async with self.pool.acquire() as conn:
            if usage_event_id:
                row = await conn.fetchrow(repo.LEDGER_BY_EVENT, usage_event_id)
            else:
                row = await conn.fetchrow(repo.USAGE_BY_REQUEST, request_id or "")
        if row is None or row["kind"] != "usage":
            raise NotFound("no such charge")
        charged = -row["amount_micros"]
        amount = charged if amount_micros is None else amount_micros
        if not 0 < amount <= charged:
            raise ServiceError(f"a refund must be between 1 and {charged} micro-USD", field="amount_micros")
        event_id = wallets.derived_id("refund", row["event_id"])
        posted = await self.post(row["account_id"], wallets.Entry(
            kind="refund", amount=amount, event_id=event_id, request_id=row["request_id"],
            reference=row["event_id"], reason=reason or "refund", model=row["model"]), "refund")
        if posted is None:
            raise Conflict("this charge was already refunded", code="already_refunded")
        return posted

    async def set_threshold(self, account_id: str, threshold_micros: int) -> None:
        if threshold_micros < 0:
            raise ServiceError("threshold must not be negative", field="threshold_micros")
        async with self.pool.acquire() as conn, conn.transaction():
            await wallets.lock(conn, [account_id])
            (spend, _version), = [(s, v) for _, s, v in await wallets.spendable_now(conn, [account_id])]
            # Choosing a threshold is not a crossing: record the current state without announcing it.
            await conn.execute(repo.SET_THRESHOLD, account_id, threshold_micros,
                               ledger.low_state(spend, threshold_micros))
