"""The billing process: the `billing-usage` consumer, the plan-expiry scan, start-up hydration of Redis, and
the HTTP API (user wallet under /v1/billing, admin under /v1/admin/billing, the gateway's /internal load
call)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
from litestar import Litestar, Request, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody

from services.billing import consumer, hydrate, payments, repo, schemas, wallets
from services.billing.auth import Authenticator, Caller, internal_ok, require_admin, wallet_of
from services.billing.config import BillingSettings
from services.billing.funding import Funding
from services.billing.guard import BillingGuard
from shared import bus, config, logs, telemetry, web
from shared.config import CommonSettings
from shared.money import parse_usd, usd
from shared.runtime import open_resources
from shared.web import (
    NotFound,
    ReadyCheck,
    ServiceError,
    Unauthorized,
    ops_handlers,
    request_id_middleware,
    service_error_handler,
)

LEDGER_KINDS = ("usage", "topup", "code", "plan", "refund", "adjustment", "seed")


def money(name: str, micros: int) -> dict[str, Any]:
    return {f"{name}_micros": micros, f"{name}_usd": usd(micros)}


def _plan_view(r: Any) -> dict[str, Any]:
    return {"plan_id": r["plan_id"], "name": r["name"], **money("price", r["price_micros"]),
            **money("credit", r["credit_micros"]), "validity_days": r["validity_days"],
            "models": list(r["models"]), "active": r["active"]}


def _payment_view(p: dict[str, Any]) -> dict[str, Any]:
    return {"payment_id": p["payment_id"], "status": p["status"], "purpose": p["purpose"],
            "plan_id": p["plan_id"], "provider": p["provider"], "checkout_url": p["checkout_url"],
            **money("amount", p["amount_micros"]),
            **money("bonus", p["bonus_micros"]), "created_at": p["created_at"], "paid_at": p["paid_at"]}


async def provide_caller(request: Request[Any, Any, State]) -> Caller:
    auth: Authenticator = request.app.state.auth
    who = await auth.caller(request.headers, request.cookies, request.method)
    # An organisation's wallet is named like any account; the member's role decides (services/keys/orgs.py).
    return await auth.as_org_member(who, request.query_params.get("account_id"), request.method)


# --- user ---------------------------------------------------------------------------------------------------


@get("/v1/billing/wallet")
async def get_wallet(state: State, caller: NamedDependency[Caller],
                     account_id: FromQuery[str | None] = None) -> dict[str, Any]:
    account = wallet_of(caller, account_id)
    settings: BillingSettings = state.settings
    async with state.res.pool.acquire() as conn:
        row = await conn.fetchrow(repo.GET_WALLET, account)
        spend = await wallets.spendable_now(conn, [account])
        grants = await conn.fetch(repo.HELD_GRANTS, account)
    balance = row["balance_micros"] if row else 0
    threshold = row["low_threshold_micros"] if row and row["low_threshold_micros"] is not None else \
        settings.low_balance_default_micros
    now = wallets.utcnow()
    return {"account_id": account, **money("balance", balance),
            **money("spendable", spend[0][1] if spend else balance),
            **money("plan_credit", sum(g["remaining_micros"] for g in grants if g["expires_at"] > now)),
            **money("low_threshold", threshold)}


@get("/v1/billing/ledger")
async def get_ledger(state: State, caller: NamedDependency[Caller], account_id: FromQuery[str | None] = None,
                     kind: FromQuery[str | None] = None, model: FromQuery[str | None] = None,
                     since: FromQuery[datetime | None] = None, until: FromQuery[datetime | None] = None,
                     before_seq: FromQuery[int | None] = None, limit: FromQuery[int] = 50) -> dict[str, Any]:
    """Newest first; page on with `before_seq` = the previous page's `next_before_seq`."""
    account = wallet_of(caller, account_id)
    if kind is not None and kind not in LEDGER_KINDS:
        raise ServiceError(f"kind must be one of {', '.join(LEDGER_KINDS)}", code="invalid_kind",
                           field="kind")
    limit = max(1, min(limit, 500))
    async with state.res.pool.acquire() as conn:
        rows = await conn.fetch(repo.LEDGER_PAGE, account, before_seq, kind, model, since, until, limit)
    items = [{**dict(r), "amount_usd": usd(r["amount_micros"]), "balance_after_usd": usd(r["balance_after"]),
              "price_usd": usd(r["price_micros"])} for r in rows]
    return {"items": items, "next_before_seq": rows[-1]["seq"] if len(rows) == limit else None}


@get("/v1/billing/plans")
async def list_plans(state: State, caller: NamedDependency[Caller]) -> list[dict[str, Any]]:
    async with state.res.pool.acquire() as conn:
        return [_plan_view(r) for r in await conn.fetch(repo.LIST_PLANS, False)]


@get("/v1/billing/plans/held")
async def held_plans(state: State, caller: NamedDependency[Caller],
                     account_id: FromQuery[str | None] = None) -> list[dict[str, Any]]:
    """Every plan the wallet holds; expired ones stay listed (with what was left) but are not charged
    against."""
    account = wallet_of(caller, account_id)
    now = wallets.utcnow()
    async with state.res.pool.acquire() as conn:
        rows = await conn.fetch(repo.HELD_GRANTS, account)
    return [{"grant_id": r["grant_id"], "plan_id": r["plan_id"], "name": r["plan_name"],
             **money("credit", r["credit_micros"]), **money("remaining", r["remaining_micros"]),
             "models": list(r["models"]), "expires_at": r["expires_at"], "created_at": r["created_at"],
             "status": "active" if r["expires_at"] > now and r["remaining_micros"] > 0
             else "expired" if r["expires_at"] <= now else "used_up"} for r in rows]


@post("/v1/billing/plans/{plan_id:str}/buy", status_code=200)
async def buy_plan(state: State, caller: NamedDependency[Caller], plan_id: FromPath[str],
                   data: JSONBody[schemas.BuyPlan],
                   account_id: FromQuery[str | None] = None) -> dict[str, Any]:
    account = wallet_of(caller, account_id)
    funding: Funding = state.funding
    if data.pay_with == "balance":
        out = await funding.buy_plan_with_balance(account, plan_id, data.idempotency_key)
        return {**out, **money("balance", out["balance_micros"])}
    if data.pay_with == "payment":
        return _payment_view(await funding.start_payment(account, 0, purpose="plan", plan_id=plan_id))
    raise ServiceError("pay_with must be balance or payment", field="pay_with")


@get("/v1/billing/topup-options")
async def topup_options(state: State, caller: NamedDependency[Caller]) -> dict[str, Any]:
    settings: BillingSettings = state.settings
    funding: Funding = state.funding
    return {"presets": [money("amount", parse_usd(p)) for p in settings.topup_presets_usd],
            **money("min", parse_usd(settings.topup_min_usd)),
            **money("max", parse_usd(settings.topup_max_usd)),
            "bonus_tiers": [{**money("min", m), "percent": p} for m, p in await funding.bonus_tiers()],
            "provider": funding.provider.name}


@post("/v1/billing/topups", status_code=201)
async def start_topup(state: State, caller: NamedDependency[Caller], data: JSONBody[schemas.TopUpStart],
                      account_id: FromQuery[str | None] = None) -> dict[str, Any]:
    account = wallet_of(caller, account_id)
    if (data.amount_micros is None) == (data.amount_usd is None):
        raise ServiceError("give exactly one of amount_micros and amount_usd", field="amount_micros")
    try:
        amount = data.amount_micros if data.amount_micros is not None else parse_usd(data.amount_usd or "")
    except (ValueError, ArithmeticError):
        raise ServiceError("amount_usd is not an amount", field="amount_usd") from None
    return _payment_view(await state.funding.start_payment(account, amount))


@get("/v1/billing/topups/{payment_id:str}")
async def topup_status(state: State, caller: NamedDependency[Caller],
                       payment_id: FromPath[str]) -> dict[str, Any]:
    funding: Funding = state.funding
    return _payment_view(await funding.payment(payment_id, None if caller.is_admin else caller.account_id))


@post("/v1/billing/sandbox/payments/{payment_id:str}/pay", status_code=200)
async def sandbox_pay(state: State, caller: NamedDependency[Caller],
                      payment_id: FromPath[str]) -> dict[str, Any]:
    """The sandbox provider's "checkout": paying succeeds at once (only when the sandbox provider is in
    use)."""
    funding: Funding = state.funding
    if funding.provider.name != "sandbox":
        raise NotFound("the sandbox provider is not enabled")
    pay = await funding.payment(payment_id, None if caller.is_admin else caller.account_id)
    await funding.complete_payment(payments.PaymentNotice(payment_id, pay["provider_ref"],
                                                          pay["amount_micros"]))
    return _payment_view(await funding.payment(payment_id))


@post("/v1/billing/webhooks/stripe", status_code=200)
async def stripe_webhook(state: State, request: Request[Any, Any, State]) -> dict[str, Any]:
    funding: Funding = state.funding
    if funding.provider.name != "stripe":
        raise NotFound("the Stripe provider is not enabled")
    body = await request.body()
    try:
        notice = funding.provider.parse_webhook(request.headers, body)
    except payments.BadSignature as exc:
        raise ServiceError(f"webhook rejected: {exc}", code="bad_signature", status=400) from None
    if notice is None:
        return {"received": True, "credited": False}
    return {"received": True, "credited": await funding.complete_payment(notice)}


@post("/v1/billing/redeem", status_code=200)
async def redeem(state: State, caller: NamedDependency[Caller], data: JSONBody[schemas.Redeem],
                 account_id: FromQuery[str | None] = None) -> dict[str, Any]:
    account = wallet_of(caller, account_id)
    posted = await state.funding.redeem(account, data.code)
    return {"account_id": account, **money("balance", posted.balance)}


@put("/v1/billing/threshold")
async def set_threshold(state: State, caller: NamedDependency[Caller], data: JSONBody[schemas.Threshold],
                        account_id: FromQuery[str | None] = None) -> dict[str, Any]:
    account = wallet_of(caller, account_id)
    await state.funding.set_threshold(account, data.threshold_micros)
    return {"account_id": account, **money("low_threshold", data.threshold_micros)}


# --- admin --------------------------------------------------------------------------------------------------


@post("/v1/admin/billing/wallets/{account_id:str}/adjust", status_code=200)
async def admin_adjust(state: State, caller: NamedDependency[Caller], account_id: FromPath[str],
                       data: JSONBody[schemas.Adjust]) -> dict[str, Any]:
    require_admin(caller)
    posted = await state.funding.adjust(account_id, data.amount_micros, data.reason, data.idempotency_key)
    if posted is None:
        return {"account_id": account_id, "repeated": True}
    return {"account_id": account_id, "repeated": False, **money("balance", posted.balance)}


@post("/v1/admin/billing/refunds", status_code=200)
async def admin_refund(state: State, caller: NamedDependency[Caller],
                       data: JSONBody[schemas.Refund]) -> dict[str, Any]:
    require_admin(caller)
    if not data.usage_event_id and not data.request_id:
        raise ServiceError("name the charge by usage_event_id or request_id", field="usage_event_id")
    posted = await state.funding.refund(data.usage_event_id, data.request_id, data.reason, data.amount_micros)
    assert posted is not None
    return {"account_id": posted.account_id, **money("balance", posted.balance)}


@post("/v1/admin/billing/codes", status_code=201)
async def admin_codes(state: State, caller: NamedDependency[Caller],
                      data: JSONBody[schemas.CodeBatch]) -> dict[str, Any]:
    """The codes are shown once, here; only their hashes are kept."""
    require_admin(caller)
    expires = data.expires_at or (wallets.utcnow() + timedelta(days=data.valid_days or 30))
    batch_id, codes = await state.funding.generate_codes(data.count, data.amount_micros, expires)
    return {"batch_id": batch_id, "codes": codes, **money("amount", data.amount_micros),
            "expires_at": expires}


@get("/v1/admin/billing/plans")
async def admin_plans(state: State, caller: NamedDependency[Caller]) -> list[dict[str, Any]]:
    require_admin(caller)
    async with state.res.pool.acquire() as conn:
        return [_plan_view(r) for r in await conn.fetch(repo.LIST_PLANS, True)]


@put("/v1/admin/billing/plans/{plan_id:str}")
async def admin_put_plan(state: State, caller: NamedDependency[Caller], plan_id: FromPath[str],
                         data: JSONBody[schemas.PlanDef]) -> dict[str, Any]:
    """Create or change a plan; plans already bought keep the terms they were bought with."""
    require_admin(caller)
    if data.price_micros < 0 or data.credit_micros <= 0 or data.validity_days <= 0 or not data.name.strip():
        raise ServiceError("a plan needs a name, a price >= 0, a credit > 0 and a validity > 0 days")
    async with state.res.pool.acquire() as conn:
        row = await conn.fetchrow(repo.UPSERT_PLAN, plan_id, data.name.strip(), data.price_micros,
                                  data.credit_micros, data.validity_days, data.models, data.active)
    return _plan_view(row)


@get("/v1/admin/billing/bonus-tiers")
async def admin_tiers(state: State, caller: NamedDependency[Caller]) -> schemas.Tiers:
    require_admin(caller)
    tiers = await state.funding.bonus_tiers()
    return schemas.Tiers(tiers=[schemas.Tier(min_micros=m, percent=p) for m, p in tiers])


@put("/v1/admin/billing/bonus-tiers")
async def admin_put_tiers(state: State, caller: NamedDependency[Caller],
                          data: JSONBody[schemas.Tiers]) -> schemas.Tiers:
    require_admin(caller)
    await state.funding.set_bonus_tiers([(t.min_micros, t.percent) for t in data.tiers])
    tiers = await state.funding.bonus_tiers()
    return schemas.Tiers(tiers=[schemas.Tier(min_micros=m, percent=p) for m, p in tiers])


@get("/v1/admin/billing/margin")
async def admin_margin(state: State, caller: NamedDependency[Caller], by: FromQuery[str] = "model",
                       since: FromQuery[datetime | None] = None,
                       until: FromQuery[datetime | None] = None) -> list[dict[str, Any]]:
    """Sell price, upstream cost and margin per model or per channel over a period (default: the last 30
    days)."""
    require_admin(caller)
    if by not in ("model", "channel"):
        raise ServiceError("by must be model or channel", field="by")
    until = until or wallets.utcnow()
    since = since or until - timedelta(days=30)
    sql = repo.MARGIN_BY_MODEL if by == "model" else repo.MARGIN_BY_CHANNEL
    async with state.res.pool.acquire() as conn:
        rows = await conn.fetch(sql, since, until)
    return [{by: r["key"], "requests": r["requests"], **money("sell", r["sell_micros"]),
             **money("cost", r["cost_micros"]), **money("margin", r["sell_micros"] - r["cost_micros"])}
            for r in rows]


@get("/v1/admin/billing/charges/{request_id:str}")
async def admin_charge(state: State, caller: NamedDependency[Caller],
                       request_id: FromPath[str]) -> dict[str, Any]:
    """One request's charge: what it sold for, what it cost the operator, the margin."""
    require_admin(caller)
    async with state.res.pool.acquire() as conn:
        r = await conn.fetchrow(repo.USAGE_BY_REQUEST, request_id)
    if r is None:
        raise NotFound("no charge for that request")
    return {"request_id": request_id, "account_id": r["account_id"], "usage_event_id": r["event_id"],
            "model": r["model"], "channel_id": r["channel_id"], **money("sell", r["price_micros"]),
            **money("cost", r["cost_micros"]), **money("margin", r["price_micros"] - r["cost_micros"]),
            **money("plan", r["plan_micros"]), **money("wallet", -r["amount_micros"]),
            "occurred_at": r["occurred_at"]}


# --- internal -----------------------------------------------------------------------------------------------


@post("/internal/wallets/{account_id:str}/load", status_code=200)
async def load_wallet(state: State, request: Request[Any, Any, State],
                      account_id: FromPath[str]) -> dict[str, int]:
    """The gateway found no wallet in Redis: publish this one's spendable balance there and return it."""
    if not internal_ok(request.headers, state.common.internal_token):
        raise Unauthorized("internal endpoint")
    return {"balance_micros": await hydrate.load(state.res.pool, state.guard, account_id)}


HANDLERS = [get_wallet, get_ledger, list_plans, held_plans, buy_plan, topup_options, start_topup,
            topup_status, sandbox_pay, stripe_webhook, redeem, set_threshold, admin_adjust, admin_refund,
            admin_codes, admin_plans, admin_put_plan, admin_tiers, admin_put_tiers, admin_margin,
            admin_charge, load_wallet]


def create_app(settings: BillingSettings, common: CommonSettings, *, consume: bool = True,
               http: httpx.AsyncClient | None = None) -> Litestar:
    """`consume=False` serves the API without the usage consumer (tests that drive the consumer themselves);
    `http` replaces the client used for keys' whoami and the payment provider."""
    checks: dict[str, ReadyCheck] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            res = await stack.enter_async_context(open_resources(common, "billing"))
            client = http if http is not None else await stack.enter_async_context(httpx.AsyncClient())
            assert res.pool is not None and res.redis is not None and res.js is not None
            guard = BillingGuard(res.redis, res.keys)
            provider = payments.provider_for(settings, settings.public_url, client)
            funding = Funding(res.pool, guard, res.publisher, settings, provider)
            auth = Authenticator(keys_url=common.keys_url, internal_token=common.internal_token,
                                 session_cookie=settings.session_cookie, secret_key=common.secret_key,
                                 http=client)
            app.state.update(res=res, guard=guard, funding=funding, auth=auth, settings=settings,
                             common=common)
            checks.update(res.ready_checks())
            await hydrate.hydrate_all(res.pool, guard)
            if consume:
                assert res.publisher is not None
                handler = consumer.UsageConsumer(res.pool, guard, res.publisher,
                                                 settings.low_balance_default_micros)
                spec = consumer.consumer_spec(settings.usage_batch, settings.usage_ack_wait_s)
                await bus.ensure_consumer(res.js, common.namespace, spec)  # once, before the loops race to it
                for i in range(settings.usage_consumers):
                    res.spawn(bus.run_consumer(res.js, common.namespace, spec, handler, res.stop),
                              f"{consumer.NAME}-{i}")
            expiry = hydrate.expire_plans_forever(res.pool, guard, res.publisher,
                                                  settings.low_balance_default_micros,
                                                  settings.plan_expiry_scan_s, res.stop)
            res.spawn(expiry, "billing-plan-expiry")
            yield

    return Litestar(
        logging_config=web.logging_config(),
        route_handlers=[*HANDLERS, *ops_handlers(checks)],
        dependencies={"caller": Provide(provide_caller)},
        lifespan=[lifespan],
        middleware=[request_id_middleware],
        exception_handlers={ServiceError: service_error_handler},
    )


def from_env() -> Litestar:
    settings = config.load(BillingSettings)
    common = config.load(CommonSettings)
    logs.setup("billing", common.log_level, common.log_format)
    telemetry.setup("billing", common.otel_exporter, common.otel_endpoint)
    return create_app(settings, common)
