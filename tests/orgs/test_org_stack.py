"""An organisation end to end, every part a real process (`faregate <service>`) on real Postgres, Redis, NATS:
members use org keys at a running gateway, the org's wallet pays, removing a member stops their key at once
while the others continue, and the org's ledger equals the sum of its members' charges (as usage reports them
per member). Viewers read the ledger and usage; members do not; only owners and admins export CSV. A member
over the monthly allowance an admin set gets 402 from the running gateway while others continue.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from services.billing import seed as billing_seed
from services.keys.context import Ctx
from services.keys.seed import seed_catalog
from shared.config import CommonSettings
from tests import procs
from tests.keys.conftest import PASSWORD, unique_email

REVOCATION_TARGET_S = 0.100
FUNDS = 20_000_000


@pytest.fixture(scope="module")
def stack(common: CommonSettings) -> Iterator[dict[str, procs.ServiceProcess]]:
    ports = {name: procs.free_port() for name in ("keys", "billing", "usage", "gateway", "mock-upstream")}
    env = {
        "FAREGATE_KEYS_URL": f"http://127.0.0.1:{ports['keys']}",
        "FAREGATE_BILLING_URL": f"http://127.0.0.1:{ports['billing']}",
        "FAREGATE_USAGE_URL": f"http://127.0.0.1:{ports['usage']}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    started: dict[str, procs.ServiceProcess] = {}
    try:
        for name in ("mock-upstream", "keys", "billing", "usage", "gateway"):
            started[name] = procs.start(name, env, port=ports[name], ready_path="/readyz")
        yield started
    finally:
        for sp in reversed(list(started.values())):
            sp.stop()
            print(f"--- {sp.name} log (tail) ---\n{sp.log()[-3000:]}")  # shown by pytest only on failure
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class Person:
    keys: httpx.AsyncClient  # its cookie jar holds this person's session
    csrf: str
    session: str
    account_id: str

    async def post(self, url: str, **kw: object) -> httpx.Response:
        return await self.keys.post(url, headers={"X-CSRF-Token": self.csrf}, **kw)  # type: ignore[arg-type]

    async def delete(self, url: str) -> httpx.Response:
        return await self.keys.delete(url, headers={"X-CSRF-Token": self.csrf})


@pytest.fixture
async def people(stack: dict[str, procs.ServiceProcess]) -> AsyncIterator[list[Person]]:
    made: list[Person] = []
    try:
        for _ in range(4):
            http = httpx.AsyncClient(base_url=stack["keys"].url, timeout=10)
            r = await http.post("/api/auth/register",
                                json={"email": unique_email("org"), "password": PASSWORD})
            assert r.status_code == 201, r.text
            body = r.json()
            made.append(Person(http, body["csrf_token"], r.cookies["fg_session"], body["account"]["id"]))
        yield made
    finally:
        for p in made:
            await p.keys.aclose()


async def chat(gateway: procs.ServiceProcess, secret: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(f"{gateway.url}/v1/chat/completions",
                               headers={"Authorization": f"Bearer {secret}"},
                               json={"model": "gpt-4o-mini", "max_tokens": 8,
                                     "messages": [{"role": "user", "content": "hi"}]})


async def test_members_spend_the_org_wallet_removal_stops_a_key_and_the_ledger_adds_up(
        stack: dict[str, procs.ServiceProcess], people: list[Person], ctx: Ctx, common: CommonSettings
) -> None:
    await seed_catalog(ctx, stack["mock-upstream"].url)
    owner, alice, bob, vera = people
    r = await owner.post("/api/orgs", json={"name": "Acme"})
    assert r.status_code == 201, r.text
    org_id = r.json()["id"]
    for person, role in ((alice, "member"), (bob, "member"), (vera, "viewer")):
        inv = await owner.post(f"/api/orgs/{org_id}/invitations", json={"role": role})
        token = inv.json()["url"].split("token=")[1]
        joined = await person.post("/api/orgs/invitations/accept", json={"token": token})
        assert joined.status_code == 200, joined.text
    secrets: dict[str, str] = {}
    for person in (alice, bob):
        made = await person.post(f"/api/orgs/{org_id}/keys", json={"label": "work"})
        assert made.status_code == 201, made.text
        secrets[person.account_id] = made.json()["secret"]
    await billing_seed.seed_demo(common, account_id=org_id, amount_micros=FUNDS)

    # Both members spend the org's wallet.
    served = {alice.account_id: 0, bob.account_id: 0}
    for person, times in ((alice, 3), (bob, 2)):
        for _ in range(times):
            resp = await chat(stack["gateway"], secrets[person.account_id])
            assert resp.status_code == 200, resp.text
            served[person.account_id] += 1

    # Alice is removed: her key is refused by the running gateway at once; Bob carries on.
    sent = time.monotonic()
    gone = await owner.delete(f"/api/orgs/{org_id}/members/{alice.account_id}")
    returned = time.monotonic()
    assert gone.status_code == 204, gone.text
    await asyncio.sleep(max(0.0, REVOCATION_TARGET_S - (time.monotonic() - returned)))
    refused = [await chat(stack["gateway"], secrets[alice.account_id]) for _ in range(5)]
    assert [x.status_code for x in refused] == [401] * 5
    assert "disabled" in refused[0].json()["error"]["message"]
    print(f"member removal call took {(returned - sent) * 1000:.1f} ms")
    resp = await chat(stack["gateway"], secrets[bob.account_id])
    assert resp.status_code == 200, resp.text
    served[bob.account_id] += 1

    # The viewer reads the org's ledger (billing) and per-member usage (usage); both agree once charged.
    as_vera = {"X-Session": vera.session}
    billing = httpx.AsyncClient(base_url=stack["billing"].url, timeout=10, headers=as_vera)
    usage = httpx.AsyncClient(base_url=stack["usage"].url, timeout=10, headers=as_vera)
    try:
        deadline = time.monotonic() + 30
        while True:
            ledger = await billing.get("/v1/billing/ledger", params={"account_id": org_id, "kind": "usage",
                                                                     "limit": 500})
            assert ledger.status_code == 200, ledger.text
            debits = ledger.json()["items"]
            members = await usage.get("/api/usage/members", params={"account_id": org_id})
            assert members.status_code == 200, members.text
            per_member = {m["user_id"]: m for m in members.json()}
            charged = sum(m["cost_micros"] for m in per_member.values())
            if len(debits) == sum(served.values()) and charged == -sum(d["amount_micros"] for d in debits):
                break
            assert time.monotonic() < deadline, (debits, per_member)
            await asyncio.sleep(0.2)
        assert {u: m["requests"] for u, m in per_member.items()} == served
        assert all(m["cost_micros"] > 0 for m in per_member.values())
        wallet = await billing.get("/v1/billing/wallet", params={"account_id": org_id})
        assert wallet.status_code == 200 and wallet.json()["balance_micros"] == FUNDS - charged

        # Bob (a member) sees neither the ledger nor the org's usage; the viewer may not export, the owner
        # may.
        as_bob = {"X-Session": bob.session}
        r = await billing.get("/v1/billing/ledger", params={"account_id": org_id}, headers=as_bob)
        assert r.status_code == 403 and r.json()["error"]["code"] == "org_role"
        r = await usage.get("/api/usage/members", params={"account_id": org_id}, headers=as_bob)
        assert r.status_code == 403
        r = await usage.get("/api/usage/logs.csv", params={"account_id": org_id})
        assert r.status_code == 403
        r = await usage.get("/api/usage/logs.csv", params={"account_id": org_id},
                            headers={"X-Session": owner.session})
        assert r.status_code == 200 and r.text.count("\n") == 1 + sum(served.values())
        # The viewer cannot spend or move the org's money; someone outside the org sees nothing of it.
        r = await billing.post("/v1/billing/redeem", params={"account_id": org_id}, json={"code": "X"})
        assert r.status_code == 403
        outsider = await httpx.AsyncClient(base_url=stack["keys"].url).post(
            "/api/auth/register", json={"email": unique_email("out"), "password": PASSWORD})
        r = await billing.get("/v1/billing/ledger", params={"account_id": org_id},
                              headers={"X-Session": outsider.cookies["fg_session"]})
        assert r.status_code == 403

        # An owner funds the org's wallet (sandbox payments); a viewer may not; the credit lands in the org's
        # audit log.
        r = await billing.post("/v1/billing/topups", params={"account_id": org_id}, json={"amount_usd": "5"})
        assert r.status_code == 403
        as_owner = {"X-Session": owner.session}
        r = await billing.post("/v1/billing/topups", params={"account_id": org_id}, json={"amount_usd": "5"},
                               headers=as_owner)
        assert r.status_code == 201, r.text
        paid = await billing.post(f"/v1/billing/sandbox/payments/{r.json()['payment_id']}/pay",
                                  params={"account_id": org_id}, headers=as_owner)
        assert paid.status_code == 200 and paid.json()["status"] == "paid", paid.text
        wallet = await billing.get("/v1/billing/wallet", params={"account_id": org_id})
        assert wallet.json()["balance_micros"] == FUNDS - charged + 5_000_000
        deadline = time.monotonic() + 10
        while True:
            audit = (await owner.keys.get(f"/api/orgs/{org_id}/audit")).json()
            credits = [e for e in audit if e["action"] == "wallet.credited"]
            if credits or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert [(e["detail"]["kind"], e["detail"]["amount_micros"]) for e in credits] == [
            ("topup", 5_000_000)]

        # An admin caps Bob's monthly allowance below one request: the running gateway refuses him with 402
        # (the snapshot re-published by keys), while the owner's own org key carries on.
        mine = await owner.post(f"/api/orgs/{org_id}/keys", json={"label": "owner's"})
        assert mine.status_code == 201, mine.text
        capped = await owner.keys.patch(f"/api/orgs/{org_id}/members/{bob.account_id}",
                                        json={"allowance_micros": 1}, headers={"X-CSRF-Token": owner.csrf})
        assert capped.status_code == 200, capped.text
        deadline = time.monotonic() + 5
        while (resp := await chat(stack["gateway"], secrets[bob.account_id])).status_code == 200:
            assert time.monotonic() < deadline, "the gateway never applied the allowance"
            await asyncio.sleep(0.05)
        assert resp.status_code == 402, resp.text
        assert "allowance" in resp.json()["error"]["message"]
        ok = await chat(stack["gateway"], mine.json()["secret"])
        assert ok.status_code == 200, ok.text
    finally:
        await billing.aclose()
        await usage.aclose()
