"""Organisations through the keys service's HTTP API, on real Postgres, Redis and NATS: invitations, every
role against every endpoint, removal disabling the member's org keys, and the audit log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.keys.context import Ctx
from services.keys.orgs import allowance_key
from shared import events as ev
from shared.crypto import hash_api_key
from tests.keys.conftest import Tap, User, register
from tests.orgs.helpers import Org, join, make_org


def token_of(answer: Any) -> str:
    return str(answer.json()["url"].split("token=")[1])


# --- invitations --------------------------------------------------------------------------------------------


async def test_a_link_invitation_works_once_for_whoever_holds_it(client: AsyncTestClient[Litestar]) -> None:
    org = await make_org(client, default_allowance_micros=7_000_000)
    r = await org.admin.post(f"/api/orgs/{org.id}/invitations", json={"role": "viewer"})
    assert r.status_code == 201, r.text
    token = token_of(r)
    newcomer, latecomer = await register(client), await register(client)

    joined = await newcomer.post("/api/orgs/invitations/accept", json={"token": token})
    assert joined.status_code == 200, joined.text
    # The org's default allowance applies when the invitation names none.
    assert joined.json()["role"] == "viewer" and joined.json()["allowance_micros"] == 7_000_000
    again = await latecomer.post("/api/orgs/invitations/accept", json={"token": token})
    assert again.status_code == 400 and "already accepted" in again.json()["error"]["message"]

    mine = await newcomer.get("/api/orgs")
    assert [(o["id"], o["my_role"]) for o in mine.json()] == [(org.id, "viewer")]
    assert (await latecomer.get("/api/orgs")).json() == []
    listed = await org.owner.get(f"/api/orgs/{org.id}/invitations")
    states = {i["id"]: i["status"] for i in listed.json()}
    assert states[r.json()["invitation"]["id"]] == "accepted"


async def test_an_email_invitation_is_mailed_and_only_that_address_may_answer_it(
        client: AsyncTestClient[Litestar], tap: Tap) -> None:
    org = await make_org(client)
    bob = await register(client)
    r = await org.owner.post(f"/api/orgs/{org.id}/invitations",
                             json={"email": bob.email.upper(), "role": "member",
                                   "allowance_micros": 2_000_000})
    assert r.status_code == 201, r.text
    mailed = await tap.wait_for(lambda e: isinstance(e, ev.OrgMemberInvited) and e.org_id == org.id)
    assert isinstance(mailed, ev.OrgMemberInvited)
    assert mailed.email == bob.email and mailed.org_name == "Acme" and mailed.invite_url == r.json()["url"]

    stranger = await register(client)
    refused = await stranger.post("/api/orgs/invitations/accept", json={"token": token_of(r)})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "invitation_not_yours"
    joined = await bob.post("/api/orgs/invitations/accept", json={"token": token_of(r)})
    assert joined.status_code == 200, joined.text
    assert (joined.json()["role"], joined.json()["allowance_micros"]) == ("member", 2_000_000)
    changed = await tap.wait_for(lambda e: isinstance(e, ev.OrgMemberChanged) and e.user_id == bob.account_id)
    assert isinstance(changed, ev.OrgMemberChanged) and changed.allowance_micros == 2_000_000


async def test_declined_revoked_and_expired_invitations_no_longer_work(
        client: AsyncTestClient[Litestar], ctx: Ctx) -> None:
    org = await make_org(client)
    carol = await register(client)

    declined = await org.owner.post(f"/api/orgs/{org.id}/invitations", json={})
    r = await carol.post("/api/orgs/invitations/decline", json={"token": token_of(declined)})
    assert r.status_code == 200 and r.json()["status"] == "declined"
    r = await carol.post("/api/orgs/invitations/accept", json={"token": token_of(declined)})
    assert r.status_code == 400 and "declined" in r.json()["error"]["message"]

    revoked = await org.admin.post(f"/api/orgs/{org.id}/invitations", json={})
    inv_id = revoked.json()["invitation"]["id"]
    r = await org.admin.delete(f"/api/orgs/{org.id}/invitations/{inv_id}")
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    r = await carol.post("/api/orgs/invitations/accept", json={"token": token_of(revoked)})
    assert r.status_code == 400 and "revoked" in r.json()["error"]["message"]

    stale = await org.owner.post(f"/api/orgs/{org.id}/invitations", json={})
    await ctx.pool.execute(
        "UPDATE keys.org_invitations SET expires_at = now() - interval '1 second' WHERE id = $1",
        stale.json()["invitation"]["id"])
    r = await carol.post("/api/orgs/invitations/accept", json={"token": token_of(stale)})
    assert r.status_code == 400 and "expired" in r.json()["error"]["message"]

    r = await carol.post("/api/orgs/invitations/accept", json={"token": "made-up"})
    assert r.status_code == 400 and r.json()["error"]["fields"]["token"]
    assert (await carol.get("/api/orgs")).json() == []

    # Someone already in the org cannot join twice, and the invitation stays usable by someone else.
    twice = await org.owner.post(f"/api/orgs/{org.id}/invitations", json={})
    r = await org.member.post("/api/orgs/invitations/accept", json={"token": token_of(twice)})
    assert r.status_code == 409
    r = await carol.post("/api/orgs/invitations/accept", json={"token": token_of(twice)})
    assert r.status_code == 200


async def test_invitations_are_validated(client: AsyncTestClient[Litestar]) -> None:
    org = await make_org(client)
    for body, field in (({"role": "owner"}, "role"), ({"email": "not-an-address"}, "email"),
                        ({"allowance_micros": -1}, "allowance_micros"), ({"colour": "red"}, "colour")):
        r = await org.owner.post(f"/api/orgs/{org.id}/invitations", json=body)
        assert r.status_code == 400, (body, r.text)
        assert field in r.json()["error"]["fields"], r.text
    r = await org.owner.post("/api/orgs", json={"name": "Tz", "time_zone": "Mars/Olympus"})
    assert r.status_code == 400 and "time_zone" in r.json()["error"]["fields"]


# --- every role against every endpoint ----------------------------------------------------------------------

ROLES = ("owner", "admin", "member", "viewer", "outsider")
RANK = {"viewer": 0, "member": 1, "admin": 2, "owner": 3}


async def _attempt(org: Org, client: AsyncTestClient[Litestar], role: str, endpoint: str) -> int:
    """Try one endpoint as one person; anything the attempt needs (a target member, invitation, key) is made
    fresh by the owner first, so each attempt is independent of the others."""
    who = org.by_role(role)
    base = f"/api/orgs/{org.id}"
    if endpoint == "get org":
        r = await who.get(base)
    elif endpoint == "edit org":
        r = await who.patch(base, json={"name": f"Acme {role}"})
    elif endpoint == "list members":
        r = await who.get(f"{base}/members")
    elif endpoint == "edit member":
        r = await who.patch(f"{base}/members/{org.member.account_id}", json={"allowance_micros": 5})
    elif endpoint == "remove member":
        target = await register(client)
        await join(org.id, org.owner, target, "member")
        r = await who.delete(f"{base}/members/{target.account_id}")
    elif endpoint == "list invitations":
        r = await who.get(f"{base}/invitations")
    elif endpoint == "invite":
        r = await who.post(f"{base}/invitations", json={"role": "member"})
    elif endpoint == "revoke invitation":
        inv = await org.owner.post(f"{base}/invitations", json={})
        r = await who.delete(f"{base}/invitations/{inv.json()['invitation']['id']}")
    elif endpoint == "audit log":
        r = await who.get(f"{base}/audit")
    elif endpoint == "list keys":
        r = await who.get(f"{base}/keys")
    elif endpoint == "create key":
        r = await who.post(f"{base}/keys", json={"label": f"by {role}"})
    elif endpoint in ("edit member's key", "rotate member's key", "delete member's key"):
        made = await org.member.post(f"{base}/keys", json={"label": "the member's"})
        url = f"{base}/keys/{made.json()['key']['id']}"
        if endpoint == "edit member's key":
            r = await who.patch(url, json={"label": "renamed"})
        elif endpoint == "rotate member's key":
            r = await who.post(f"{url}/rotate", json={"grace_seconds": 0})
        else:
            r = await who.delete(url)
    else:
        raise AssertionError(endpoint)
    return int(r.status_code)


# endpoint -> the least role allowed (a member may act on their own keys: the key here is the member's)
ENDPOINTS = {
    "get org": "viewer", "list members": "viewer", "edit org": "admin", "edit member": "admin",
    "remove member": "admin", "list invitations": "admin", "invite": "admin", "revoke invitation": "admin",
    "audit log": "admin", "list keys": "member", "create key": "member", "edit member's key": "member",
    "rotate member's key": "member", "delete member's key": "member",
}


async def test_every_role_against_every_org_endpoint(client: AsyncTestClient[Litestar]) -> None:
    org = await make_org(client)
    wrong: list[str] = []
    for endpoint, least in ENDPOINTS.items():
        for role in ROLES:
            status = await _attempt(org, client, role, endpoint)
            if role == "outsider":
                expected = {404}  # an org you are not in does not exist for you
            elif RANK[role] >= RANK[least]:
                expected = {200, 201, 204}
            else:
                expected = {403}
            if status not in expected:
                wrong.append(f"{role} -> {endpoint}: {status}, expected {sorted(expected)}")
    assert wrong == []


async def test_owners_are_protected_and_the_last_owner_stays(client: AsyncTestClient[Litestar]) -> None:
    org = await make_org(client)
    base = f"/api/orgs/{org.id}"
    r = await org.admin.patch(f"{base}/members/{org.member.account_id}", json={"role": "owner"})
    assert r.status_code == 403
    r = await org.admin.patch(f"{base}/members/{org.owner.account_id}", json={"allowance_micros": 1})
    assert r.status_code == 403
    r = await org.admin.delete(f"{base}/members/{org.owner.account_id}")
    assert r.status_code == 403
    r = await org.owner.delete(f"{base}/members/{org.owner.account_id}")  # leaving as the only owner
    assert r.status_code == 409
    r = await org.owner.patch(f"{base}/members/{org.owner.account_id}", json={"role": "admin"})
    assert r.status_code == 409

    # With a second owner the first may step down; anyone may leave.
    r = await org.owner.patch(f"{base}/members/{org.admin.account_id}", json={"role": "owner"})
    assert r.status_code == 200 and r.json()["role"] == "owner"
    r = await org.owner.patch(f"{base}/members/{org.owner.account_id}", json={"role": "viewer"})
    assert r.status_code == 200
    r = await org.member.delete(f"{base}/members/{org.member.account_id}")
    assert r.status_code == 204
    roles = {m["user_id"]: m["role"] for m in (await org.admin.get(f"{base}/members")).json()}
    assert roles == {org.owner.account_id: "viewer", org.admin.account_id: "owner",
                     org.viewer.account_id: "viewer"}


# --- keys under the org, and removal ------------------------------------------------------------------------


async def test_org_keys_are_paid_by_the_org_held_by_the_member_and_stop_when_the_member_is_removed(
        client: AsyncTestClient[Litestar], ctx: Ctx, tap: Tap) -> None:
    org = await make_org(client)
    base = f"/api/orgs/{org.id}"
    made = await org.member.post(f"{base}/keys", json={"label": "ci"})
    assert made.status_code == 201, made.text
    key_id, secret = made.json()["key"]["id"], made.json()["secret"]
    raw = await ctx.redis.get(ctx.keys.api_key(hash_api_key(secret)))
    snap = msgspec.json.decode(raw, type=ev.KeySnapshot)
    assert (snap.account_id, snap.user_id, snap.org_id, snap.status) == (
        org.id, org.member.account_id, org.id, "active")

    # The key is the org's: not in the member's personal list, in the org's; an admin sees every org key.
    personal = await org.member.get("/api/keys")
    assert key_id not in [k["id"] for k in personal.json()["items"]]
    assert [k["id"] for k in (await org.member.get(f"{base}/keys")).json()["items"]] == [key_id]
    assert (await org.admin.get(f"{base}/keys")).json()["items"] == []  # their own: none
    assert key_id in [k["id"] for k in (await org.admin.get(f"{base}/keys?all=true")).json()["items"]]

    r = await org.admin.delete(f"{base}/members/{org.member.account_id}")
    assert r.status_code == 204
    raw = await ctx.redis.get(ctx.keys.api_key(hash_api_key(secret)))
    assert msgspec.json.decode(raw, type=ev.KeySnapshot).status == "disabled"
    told = await tap.wait_for(lambda e: isinstance(e, ev.KeyChanged) and e.key.key_id == key_id
                              and e.key.status == "disabled")
    assert isinstance(told, ev.KeyChanged) and told.key.org_id == org.id
    removed = await tap.wait_for(lambda e: isinstance(e, ev.OrgMemberChanged) and e.removed)
    assert isinstance(removed, ev.OrgMemberChanged) and removed.user_id == org.member.account_id

    # Nobody brings it back while its holder is out of the org; the former member no longer sees the org.
    again = await org.owner.patch(f"{base}/keys/{key_id}", json={"status": "active"})
    assert again.status_code == 409
    assert (await org.member.get(f"{base}/keys")).status_code == 404
    assert (await org.member.get(base)).status_code == 404


async def test_the_audit_log_says_who_did_what_to_whom(client: AsyncTestClient[Litestar]) -> None:
    org = await make_org(client)
    base = f"/api/orgs/{org.id}"
    await org.admin.patch(f"{base}/members/{org.member.account_id}", json={"role": "viewer",
                                                                            "allowance_micros": 3_000_000})
    await org.owner.patch(base, json={"default_allowance_micros": 1_000_000, "time_zone": "Europe/Paris"})
    await org.admin.delete(f"{base}/members/{org.viewer.account_id}")
    entries = (await org.owner.get(f"{base}/audit")).json()
    seen = [(e["actor_id"], e["action"], e["subject_id"], e["detail"]) for e in entries[:4]]
    assert seen == [
        (org.admin.account_id, "member.removed", org.viewer.account_id,
         {"role": "viewer", "keys_disabled": []}),
        (org.owner.account_id, "org.updated", org.id,
         {"time_zone": "Europe/Paris", "default_allowance_micros": 1_000_000}),
        (org.admin.account_id, "member.allowance_changed", org.member.account_id,
         {"old": 0, "new": 3_000_000}),
        (org.admin.account_id, "member.role_changed", org.member.account_id,
         {"old": "member", "new": "viewer"}),
    ]
    assert all(e["at"] for e in entries)
    joins = [e for e in entries if e["action"] == "member.joined"]
    assert {e["subject_id"] for e in joins} == {org.admin.account_id, org.member.account_id,
                                               org.viewer.account_id}
    # Paging: older than the fourth entry.
    older = (await org.owner.get(f"{base}/audit?before={entries[3]['id']}&limit=2")).json()
    assert [e["id"] for e in older] == [entries[4]["id"], entries[5]["id"]]


async def test_the_internal_membership_lookup(client: AsyncTestClient[Litestar], ctx: Ctx) -> None:
    org = await make_org(client)
    token = ctx.common.internal_token
    r = await client.get(f"/internal/orgs/{org.id}/members/{org.viewer.account_id}",
                         headers={"X-Internal-Token": token})
    assert r.status_code == 200 and r.json()["role"] == "viewer" and r.json()["time_zone"] == "UTC"
    r = await client.get(f"/internal/orgs/{org.id}/members/{org.outsider.account_id}",
                         headers={"X-Internal-Token": token})
    assert r.status_code == 404
    r = await client.get(f"/internal/orgs/{org.id}/members/{org.viewer.account_id}")
    assert r.status_code == 401


async def test_not_logged_in_and_unknown_orgs(client: AsyncTestClient[Litestar]) -> None:
    assert (await client.get("/api/orgs")).status_code == 401
    someone: User = await register(client)
    assert (await someone.get("/api/orgs/org_doesnotexist")).status_code == 404


async def test_a_members_allowance_and_the_orgs_time_zone_reach_the_gateways_in_the_key_snapshot(
        client: AsyncTestClient[Litestar], ctx: Ctx, tap: Tap) -> None:
    org = await make_org(client, time_zone="America/New_York")
    base = f"/api/orgs/{org.id}"
    made = await org.member.post(f"{base}/keys", json={"label": "ci"})
    key_id, key_hash = made.json()["key"]["id"], hash_api_key(made.json()["secret"])

    async def cached() -> ev.KeySnapshot:
        return msgspec.json.decode(await ctx.redis.get(ctx.keys.api_key(key_hash)), type=ev.KeySnapshot)

    assert ((await cached()).allowance_micros, (await cached()).allowance_tz) == (0, "America/New_York")
    r = await org.admin.patch(f"{base}/members/{org.member.account_id}", json={"allowance_micros": 4_000_000})
    assert r.status_code == 200, r.text
    assert (await cached()).allowance_micros == 4_000_000
    await tap.wait_for(lambda e: isinstance(e, ev.KeyChanged) and e.key.key_id == key_id
                       and e.key.allowance_micros == 4_000_000)
    r = await org.owner.patch(base, json={"time_zone": "Asia/Tokyo"})
    assert r.status_code == 200, r.text
    assert (await cached()).allowance_tz == "Asia/Tokyo"
    # A personal key carries no allowance.
    personal = await org.member.post("/api/keys", json={"label": "mine"})
    snap = msgspec.json.decode(await ctx.redis.get(ctx.keys.api_key(hash_api_key(personal.json()["secret"]))),
                               type=ev.KeySnapshot)
    assert (snap.org_id, snap.allowance_micros, snap.account_id) == (None, 0, org.member.account_id)


async def test_a_person_belongs_to_several_orgs_and_keeps_their_personal_account(
        client: AsyncTestClient[Litestar]) -> None:
    first, second = await make_org(client), await make_org(client)
    both = first.member
    await join(second.id, second.owner, both, "viewer")
    mine = {o["id"]: o["my_role"] for o in (await both.get("/api/orgs")).json()}
    assert mine == {first.id: "member", second.id: "viewer"}
    # Roles are per org: a viewer in the second cannot make keys there, a member in the first can.
    assert (await both.post(f"/api/orgs/{second.id}/keys", json={"label": "x"})).status_code == 403
    assert (await both.post(f"/api/orgs/{first.id}/keys", json={"label": "x"})).status_code == 201
    personal = (await both.get("/api/keys")).json()["items"]
    assert [k["account_id"] for k in personal] == [both.account_id]  # the default key from registration


async def test_members_show_what_they_spent_of_their_allowance_this_month(
        client: AsyncTestClient[Litestar], ctx: Ctx) -> None:
    org = await make_org(client, time_zone="Asia/Tokyo")
    # What a gateway wrote when it settled the member's requests this month (test_org_allowance.py shows it).
    key = allowance_key(ctx, org.id, org.member.account_id, "Asia/Tokyo", datetime.now(UTC))
    await ctx.redis.hset(key, mapping={"used": 1234, "reserved": 0})
    listed = {m["user_id"]: m["allowance_used_micros"] for m in (await org.viewer.get(
        f"/api/orgs/{org.id}/members")).json()}
    assert listed[org.member.account_id] == 1234 and listed[org.owner.account_id] == 0


async def test_credits_to_the_orgs_wallet_appear_in_its_audit_log_once(
        client: AsyncTestClient[Litestar], ctx: Ctx) -> None:
    org = await make_org(client)
    credit = ev.WalletCredited(account_id=org.id, kind="topup", amount_micros=5_000_000,
                               paid_micros=5_000_000,
                               balance_micros=5_000_000, reference="pay_123")
    personal = ev.WalletCredited(account_id=org.owner.account_id, kind="code", amount_micros=1,
                                 balance_micros=1)
    for e in (credit, credit, personal):  # a redelivered event is the same event
        await ctx.publisher.publish(e)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        entries = (await org.admin.get(f"/api/orgs/{org.id}/audit")).json()
        wallet = [e for e in entries if e["action"] == "wallet.credited"]
        if wallet or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # room for a duplicate to show up, if one were written
    entries = (await org.admin.get(f"/api/orgs/{org.id}/audit")).json()
    wallet = [e for e in entries if e["action"] == "wallet.credited"]
    assert [(e["actor_id"], e["subject_id"], e["detail"]["amount_micros"], e["detail"]["reference"])
            for e in wallet] == [("billing", credit.event_id, 5_000_000, "pay_123")]
    count = await ctx.pool.fetchval(
        "SELECT count(*) FROM keys.org_audit WHERE action = 'wallet.credited' AND subject_id = $1",
        personal.event_id)
    assert count == 0
