"""Money in: sandbox and Stripe-style top-ups with bonus tiers, redemption codes, plans, admin adjustments and
refunds, through the HTTP API against real Postgres, Redis and NATS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.billing import consumer, hydrate, payments
from services.billing.app import create_app
from services.billing.config import BillingSettings
from services.billing.guard import BillingGuard
from shared.config import CommonSettings
from shared.events import ModelPrice, new_id
from shared.runtime import Resources
from shared.wallet import SpendGuard
from tests.billing.conftest import balance, usage

WEBHOOK_SECRET = "whsec_test_secret"


def as_user(account: str) -> dict[str, str]:
    return {"X-Internal-Token": "dev-internal-token", "X-Account-Id": account}


ADMIN = {"X-Internal-Token": "dev-internal-token", "X-Role": "admin"}


class FakeStripe:
    """Stands in for api.stripe.com (the one external paid API here): records the checkout sessions made."""

    def __init__(self) -> None:
        self.sessions: list[dict[str, str]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        authorised = request.headers["authorization"] == "Bearer sk_test_x"
        if request.url.path == "/v1/checkout/sessions" and authorised:
            form = dict(httpx.QueryParams(request.content.decode()))
            self.sessions.append(form)
            sid = f"cs_test_{len(self.sessions)}"
            return httpx.Response(200, json={"id": sid, "url": f"https://checkout.stripe.test/{sid}"})
        return httpx.Response(401, json={"error": {"message": "bad key"}})


@pytest.fixture
def fake_stripe() -> FakeStripe:
    return FakeStripe()


@pytest.fixture
async def client(common: CommonSettings) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(BillingSettings(plan_expiry_scan_s=3600), common, consume=False)
    async with AsyncTestClient(app) as c:
        yield c


@pytest.fixture
async def stripe_client(common: CommonSettings,
                        fake_stripe: FakeStripe) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = BillingSettings(payment_provider="stripe", stripe_secret_key="sk_test_x",
                               stripe_webhook_secret=WEBHOOK_SECRET, plan_expiry_scan_s=3600)
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake_stripe.handler))
    app = create_app(settings, common, consume=False, http=http)
    async with AsyncTestClient(app) as c:
        yield c
    await http.aclose()


async def wallet(c: AsyncTestClient[Any], account: str) -> dict[str, Any]:
    r = await c.get("/v1/billing/wallet", headers=as_user(account))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_sandbox_topup_with_bonus_tier_credits_once(client: AsyncTestClient[Any],
                                                          resources: Resources) -> None:
    account = new_id()
    r = await client.post("/v1/billing/topups", json={"amount_usd": "50"}, headers=as_user(account))
    assert r.status_code == 201, r.text
    pay = r.json()
    assert (pay["amount_micros"], pay["bonus_micros"], pay["status"]) == (50_000_000, 7_500_000,
                                                                          "pending")  # +15%
    assert pay["bonus_usd"] == "$7.500000"
    for _ in range(2):  # paying twice (a double click) credits once
        r = await client.post(f"/v1/billing/sandbox/payments/{pay['payment_id']}/pay",
                              headers=as_user(account))
        assert r.status_code == 200 and r.json()["status"] == "paid"
    assert (await wallet(client, account))["balance_micros"] == 57_500_000
    # Redis holds the same number for the gateway.
    assert resources.redis
    snap = await SpendGuard(resources.redis, resources.keys).snapshot(account)
    assert snap["balance"] == 57_500_000
    # Someone else's payment is not theirs to see.
    r = await client.get(f"/v1/billing/topups/{pay['payment_id']}", headers=as_user(new_id()))
    assert r.status_code == 404


async def test_topup_amount_limits_and_tiers(client: AsyncTestClient[Any]) -> None:
    account = new_id()
    r = await client.post("/v1/billing/topups", json={"amount_usd": "0.5"}, headers=as_user(account))
    assert r.status_code == 400 and r.json()["error"]["code"] == "amount_out_of_range"
    r = await client.post("/v1/billing/topups", json={"amount_usd": "12.345"}, headers=as_user(account))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_amount"
    bonuses = []
    for amount in ("19.99", "20", "99", "100", "250"):
        r = await client.post("/v1/billing/topups", json={"amount_usd": amount}, headers=as_user(account))
        bonuses.append(r.json()["bonus_micros"])
    assert bonuses == [0, 2_000_000, 14_850_000, 20_000_000, 50_000_000]
    opts = (await client.get("/v1/billing/topup-options", headers=as_user(account))).json()
    assert [p["amount_usd"] for p in opts["presets"]][:3] == ["$5.000000", "$10.000000", "$20.000000"]


def _signed(body: bytes, secret: str = WEBHOOK_SECRET, at: int | None = None) -> dict[str, str]:
    return {"Stripe-Signature": payments.stripe_signature(secret, body, at or int(time.time())),
            "Content-Type": "application/json"}


def _completed(payment_id: str, cents: int, session: str = "cs_test_1") -> bytes:
    return msgspec.json.encode({"id": f"evt_{new_id()}", "type": "checkout.session.completed",
                                "data": {"object": {
        "id": session, "client_reference_id": payment_id, "amount_total": cents, "currency": "usd",
        "payment_status": "paid"}}})


async def test_stripe_webhook_is_verified_and_idempotent(stripe_client: AsyncTestClient[Any],
                                                         fake_stripe: FakeStripe) -> None:
    c = stripe_client
    account = new_id()
    r = await c.post("/v1/billing/topups", json={"amount_micros": 20_000_000}, headers=as_user(account))
    assert r.status_code == 201, r.text
    pay = r.json()
    assert pay["checkout_url"].startswith("https://checkout.stripe.test/")
    assert fake_stripe.sessions[0]["line_items[0][price_data][unit_amount]"] == "2000"
    assert fake_stripe.sessions[0]["client_reference_id"] == pay["payment_id"]
    body = _completed(pay["payment_id"], 2000)

    # Forged, tampered, stale or unsigned webhooks credit nothing.
    for headers, payload in [
        (_signed(body, secret="whsec_wrong"), body),
        (_signed(body), _completed(pay["payment_id"], 900_000)),  # signature of another body
        (_signed(body, at=int(time.time()) - 3600), body),
        ({"Content-Type": "application/json"}, body),
    ]:
        r = await c.post("/v1/billing/webhooks/stripe", content=payload, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_signature"
    assert (await wallet(c, account))["balance_micros"] == 0

    # The genuine one credits $20 + 10%, once, however often Stripe retries it.
    results = await asyncio.gather(*(c.post("/v1/billing/webhooks/stripe", content=body,
                                            headers=_signed(body))
                                     for _ in range(5)))
    assert all(r.status_code == 200 for r in results)
    assert sorted(r.json()["credited"] for r in results) == [False] * 4 + [True]
    assert (await wallet(c, account))["balance_micros"] == 22_000_000
    status = (await c.get(f"/v1/billing/topups/{pay['payment_id']}", headers=as_user(account))).json()
    assert status["status"] == "paid"

    # A checkout that expires unpaid marks the payment failed and credits nothing.
    r = await c.post("/v1/billing/topups", json={"amount_micros": 5_000_000}, headers=as_user(account))
    expired_id = r.json()["payment_id"]
    expired = msgspec.json.encode({"id": "evt_x", "type": "checkout.session.expired", "data": {"object": {
        "id": "cs_test_x", "client_reference_id": expired_id, "payment_status": "unpaid"}}})
    r = await c.post("/v1/billing/webhooks/stripe", content=expired, headers=_signed(expired))
    assert r.status_code == 200 and r.json()["credited"] is False
    status = (await c.get(f"/v1/billing/topups/{expired_id}", headers=as_user(account))).json()
    assert status["status"] == "failed"

    # A correctly signed notice for a different amount than the payment is refused.
    r = await c.post("/v1/billing/topups", json={"amount_micros": 30_000_000}, headers=as_user(account))
    other = _completed(r.json()["payment_id"], 100)
    r = await c.post("/v1/billing/webhooks/stripe", content=other, headers=_signed(other))
    assert r.status_code == 400 and r.json()["error"]["code"] == "amount_mismatch"
    assert (await wallet(c, account))["balance_micros"] == 22_000_000


async def test_a_code_redeems_once_even_when_raced(client: AsyncTestClient[Any]) -> None:
    r = await client.post("/v1/admin/billing/codes", json={"count": 3, "amount_micros": 5_000_000,
                                                           "valid_days": 7},
                          headers=ADMIN)
    assert r.status_code == 201, r.text
    codes = r.json()["codes"]
    assert len(set(codes)) == 3
    users = [new_id() for _ in range(8)]
    results = await asyncio.gather(*(client.post("/v1/billing/redeem", json={"code": codes[0]},
                                                 headers=as_user(u)) for u in users))
    assert sorted(r.status_code for r in results) == [200] + [409] * 7
    winner = users[[r.status_code for r in results].index(200)]
    assert (await wallet(client, winner))["balance_micros"] == 5_000_000
    assert sum([(await wallet(client, u))["balance_micros"] for u in users]) == 5_000_000
    r = await client.post("/v1/billing/redeem", json={"code": "NOPE-NOPE-NOPE-NOPE"},
                          headers=as_user(users[0]))
    assert r.status_code == 404 and r.json()["error"]["code"] == "invalid_code"
    # Users cannot mint codes.
    r = await client.post("/v1/admin/billing/codes", json={"count": 1, "amount_micros": 1, "valid_days": 1},
                          headers=as_user(users[0]))
    assert r.status_code == 403


async def test_an_expired_code_is_refused(client: AsyncTestClient[Any], resources: Resources) -> None:
    assert resources.pool
    codes = (await client.post("/v1/admin/billing/codes", json={"count": 1, "amount_micros": 1_000,
                                                                "valid_days": 1},
                               headers=ADMIN)).json()["codes"]
    await resources.pool.execute("UPDATE billing.codes SET expires_at = now() - interval '1 second'"
                                 " WHERE redeemed_at IS NULL AND amount_micros = 1000")
    r = await client.post("/v1/billing/redeem", json={"code": codes[0].lower()}, headers=as_user(new_id()))
    assert r.status_code == 410 and r.json()["error"]["code"] == "code_expired"


async def _put_plan(c: AsyncTestClient[Any], plan_id: str, **kw: Any) -> None:
    body = {"name": plan_id, "price_micros": 8_000_000, "credit_micros": 10_000_000, "validity_days": 30,
            **kw}
    r = await c.put(f"/v1/admin/billing/plans/{plan_id}", json=body, headers=ADMIN)
    assert r.status_code == 200, r.text


async def test_plans_are_used_before_the_balance_and_expired_remainders_are_not(
        client: AsyncTestClient[Any], resources: Resources) -> None:
    assert resources.pool and resources.redis
    guard = BillingGuard(resources.redis, resources.keys)
    account = new_id()
    plan_id = f"p-{new_id()[:8]}"
    await _put_plan(client, plan_id)
    await _put_plan(client, plan_id + "-mini", price_micros=1_000_000, credit_micros=2_000_000,
                    models=["gpt-4o-mini"])
    r = await client.post(f"/v1/admin/billing/wallets/{account}/adjust",
                          json={"amount_micros": 20_000_000, "reason": "welcome"}, headers=ADMIN)
    assert r.status_code == 200
    buy = {"pay_with": "balance", "idempotency_key": "k1"}
    r = await client.post(f"/v1/billing/plans/{plan_id}/buy", json=buy, headers=as_user(account))
    assert r.status_code == 200, r.text
    again = await client.post(f"/v1/billing/plans/{plan_id}/buy", json={"pay_with": "balance",
                                                                          "idempotency_key": "k1"},
                              headers=as_user(account))
    assert again.json()["repeated"] is True
    await client.post(f"/v1/billing/plans/{plan_id}-mini/buy", json={}, headers=as_user(account))
    w = await wallet(client, account)
    # 20 - 8 - 1 = 11 in the wallet; spendable for the gateway = 11 + 10 (the unrestricted plan only).
    assert (w["balance_micros"], w["spendable_micros"], w["plan_credit_micros"]) == (11_000_000, 21_000_000,
                                                                                     12_000_000)
    assert (await SpendGuard(resources.redis, resources.keys).snapshot(account))["balance"] == 21_000_000

    price = ModelPrice(input=0, output=1_000_000)  # 1 micro per output token
    # gpt-4o-mini takes the restricted plan first (2.0), then 0.5 of the general one; `other` takes 9.0 more.
    evs = [usage(account, model="gpt-4o-mini", price=price, prompt_tokens=0, completion_tokens=2_500_000),
           usage(account, model="other", price=price, prompt_tokens=0, completion_tokens=9_000_000)]
    await consumer.apply_batch(resources.pool, evs, default_threshold=0)
    held = {p["name"]: p for p in (await client.get("/v1/billing/plans/held",
                                                    headers=as_user(account))).json()}
    left = held[plan_id + "-mini"]["remaining_micros"] + held[plan_id]["remaining_micros"]
    assert left == 12_000_000 - 11_500_000
    assert (await wallet(client, account))["balance_micros"] == 11_000_000  # plans paid for everything

    # Time passes: the unrestricted plan expires with credit left. It shows as expired and is not charged.
    await resources.pool.execute("UPDATE billing.plan_grants SET expires_at = now() - interval '1 second'"
                                 " WHERE account_id = $1 AND plan_id = $2", account, plan_id)
    assert await hydrate.expire_plans_once(resources.pool, guard, None, 0) == 1
    held = {p["name"]: p for p in (await client.get("/v1/billing/plans/held",
                                                    headers=as_user(account))).json()}
    assert held[plan_id]["status"] == "expired" and held[plan_id]["remaining_micros"] > 0
    assert (await SpendGuard(resources.redis, resources.keys).snapshot(account))["balance"] == 11_000_000
    await consumer.apply_batch(resources.pool, [usage(account, model="other", price=price, prompt_tokens=0,
                                                      completion_tokens=1_000_000)], default_threshold=0)
    assert (await wallet(client, account))["balance_micros"] == 10_000_000
    held_after = {p["name"]: p for p in (await client.get("/v1/billing/plans/held",
                                                          headers=as_user(account))).json()}
    assert held_after[plan_id]["remaining_micros"] == held[plan_id]["remaining_micros"]


async def test_a_plan_cannot_be_bought_without_the_balance(client: AsyncTestClient[Any]) -> None:
    plan_id = f"p-{new_id()[:8]}"
    await _put_plan(client, plan_id)
    r = await client.post(f"/v1/billing/plans/{plan_id}/buy", json={}, headers=as_user(new_id()))
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_balance"


async def test_a_plan_paid_by_payment_is_granted_once(client: AsyncTestClient[Any]) -> None:
    plan_id = f"p-{new_id()[:8]}"
    await _put_plan(client, plan_id)
    account = new_id()
    r = await client.post(f"/v1/billing/plans/{plan_id}/buy", json={"pay_with": "payment"},
                          headers=as_user(account))
    pay = r.json()
    assert (pay["purpose"], pay["amount_micros"], pay["bonus_micros"]) == ("plan", 8_000_000, 0)
    for _ in range(2):
        await client.post(f"/v1/billing/sandbox/payments/{pay['payment_id']}/pay", headers=as_user(account))
    held = (await client.get("/v1/billing/plans/held", headers=as_user(account))).json()
    assert [(p["name"], p["remaining_micros"], p["status"]) for p in held] == [(plan_id, 10_000_000,
                                                                                "active")]
    w = await wallet(client, account)
    assert (w["balance_micros"], w["spendable_micros"]) == (0, 10_000_000)


async def test_admin_adjusts_with_a_reason_and_refunds_a_charge_once(client: AsyncTestClient[Any],
                                                                     resources: Resources) -> None:
    assert resources.pool
    account = new_id()
    r = await client.post(f"/v1/admin/billing/wallets/{account}/adjust", json={"amount_micros": 1_000_000,
                                                                               "reason": ""}, headers=ADMIN)
    assert r.status_code == 400
    r = await client.post(f"/v1/admin/billing/wallets/{account}/adjust",
                          json={"amount_micros": 1_000_000, "reason": "goodwill"}, headers=as_user(account))
    assert r.status_code == 403
    await client.post(f"/v1/admin/billing/wallets/{account}/adjust",
                      json={"amount_micros": 1_000_000, "reason": "goodwill"}, headers=ADMIN)
    e = usage(account)
    await consumer.apply_batch(resources.pool, [e], default_threshold=0)
    assert await balance(resources, account) == 1_000_000 - 450
    charge = (await client.get(f"/v1/admin/billing/charges/{e.request_id}", headers=ADMIN)).json()
    assert (charge["sell_micros"], charge["cost_micros"], charge["margin_micros"]) == (450, 360, 90)
    r = await client.post("/v1/admin/billing/refunds", json={"request_id": e.request_id,
                                                             "reason": "bad answer"},
                          headers=ADMIN)
    assert r.status_code == 200 and r.json()["balance_micros"] == 1_000_000
    r = await client.post("/v1/admin/billing/refunds", json={"usage_event_id": e.event_id}, headers=ADMIN)
    assert r.status_code == 409
    ledger = (await client.get("/v1/billing/ledger", headers=as_user(account))).json()["items"]
    assert [(i["kind"], i["amount_micros"], i["reason"]) for i in ledger] == [
        ("refund", 450, "bad answer"), ("usage", -450, ""), ("adjustment", 1_000_000, "goodwill")]
    only_usage = (await client.get("/v1/billing/ledger?kind=usage", headers=as_user(account))).json()["items"]
    assert [i["kind"] for i in only_usage] == ["usage"]
    page = (await client.get("/v1/billing/ledger?limit=2", headers=as_user(account))).json()
    rest = (await client.get(f"/v1/billing/ledger?limit=2&before_seq={page['next_before_seq']}",
                             headers=as_user(account))).json()
    assert [i["seq"] for i in page["items"] + rest["items"]] == [3, 2, 1]
    # Another user's ledger is not reachable.
    r = await client.get(f"/v1/billing/ledger?account_id={account}", headers=as_user(new_id()))
    assert r.status_code == 403


async def test_the_gateway_load_call_hydrates_redis(client: AsyncTestClient[Any],
                                                    resources: Resources) -> None:
    assert resources.redis
    account = new_id()
    await client.post(f"/v1/admin/billing/wallets/{account}/adjust",
                      json={"amount_micros": 3_000_000, "reason": "x"}, headers=ADMIN)
    await resources.redis.delete(resources.keys.wallet(account))  # Redis lost it
    r = await client.post(f"/internal/wallets/{account}/load")
    assert r.status_code == 401
    r = await client.post(f"/internal/wallets/{account}/load",
                          headers={"X-Internal-Token": "dev-internal-token"})
    assert r.json() == {"balance_micros": 3_000_000}
    assert (await SpendGuard(resources.redis, resources.keys).snapshot(account))["balance"] == 3_000_000
    r = await client.post(f"/internal/wallets/{new_id()}/load",
                          headers={"X-Internal-Token": "dev-internal-token"})
    assert r.json() == {"balance_micros": 0}


async def test_threshold_is_per_account(client: AsyncTestClient[Any]) -> None:
    account = new_id()
    assert (await wallet(client, account))["low_threshold_micros"] == 1_000_000  # the default
    r = await client.put("/v1/billing/threshold", json={"threshold_micros": 5_000_000},
                         headers=as_user(account))
    assert r.status_code == 200
    assert (await wallet(client, account))["low_threshold_usd"] == "$5.000000"
    r = await client.put("/v1/billing/threshold", json={"threshold_micros": -1}, headers=as_user(account))
    assert r.status_code == 400
    r = await client.put("/v1/billing/threshold", json={"threshold": 5}, headers=as_user(account))
    assert r.status_code == 400


def test_malformed_billing_settings_fail_at_start_naming_the_variable() -> None:
    from shared import config
    from shared.config import ConfigError

    for env, name in [({"FAREGATE_BILLING_BONUS_TIERS": "20=ten"}, "FAREGATE_BILLING_BONUS_TIERS"),
                      ({"FAREGATE_BILLING_TOPUP_MIN_USD": "one"}, "FAREGATE_BILLING_TOPUP_MIN_USD"),
                      ({"FAREGATE_BILLING_PAYMENT_PROVIDER": "stripe"}, "FAREGATE_BILLING_STRIPE_SECRET_KEY"),
                      ({"FAREGATE_BILLING_PAYMENT_PROVIDER": "paypal"}, "FAREGATE_BILLING_PAYMENT_PROVIDER")]:
        with pytest.raises(ConfigError, match=name):
            config.load(BillingSettings, env)
