"""Organisations: an account of kind "org" that owns a wallet and keys, and the people in it.

Roles, from most to least: owner, admin (manage members, invitations, settings and every key), member
(their own keys in the org), viewer (reads: the org, its members; usage and the ledger in usage and billing).
Someone who is not a member gets "not found", exactly like an org that does not exist, so ids cannot be
probed; a member whose role is too low gets 403. Only an owner makes or unmakes owners, and the last owner
can neither leave nor be demoted. Every change of membership, role, allowance or settings is written to
`org_audit` in the same transaction.

An org key is an ordinary API key with account_id = the org (its wallet pays) and user_id = the member.
Removing a member disables their org keys and re-publishes them by the usual path (Redis snapshot +
key.changed), so running gateways refuse them at once.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
import msgspec

from services.keys import accounts, apikeys, repo
from services.keys.context import Ctx, Principal
from services.keys.errors import InvalidInput
from services.keys.org_schemas import (
    AuditOut,
    InvitationOut,
    InvitationWithLink,
    InviteIn,
    MemberOut,
    MemberPatch,
    MembershipOut,
    OrgCreateIn,
    OrgOut,
    OrgPatch,
)
from services.keys.schemas import KeyCreateIn, KeyOut, KeyPage, KeyPatch
from shared import events as ev
from shared.web import Conflict, Forbidden, NotFound

log = logging.getLogger("faregate.keys.orgs")

RANK = {"viewer": 0, "member": 1, "admin": 2, "owner": 3}
MANAGE = "admin"  # the least role that manages members, invitations, settings and every key
KEYS = "member"  # the least role that holds keys in the org
VIEW = "viewer"

_json = msgspec.json.Encoder()


def new_org_id() -> str:
    return "org_" + secrets.token_hex(8)


def _time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput({"time_zone": f"unknown time zone {name!r} (an IANA name such as Europe/Paris)"}
                           ) from None
    return name


# --- who may do what ----------------------------------------------------------------------------------------


async def _role(conn: asyncpg.Connection, who: Principal, org_id: str, least: str, *,
                lock: bool = False) -> str:
    """The caller's role in the org, if at least `least`. A non-member hears "not found"."""
    if lock:
        await conn.fetchval(repo.LOCK_ORG, org_id)
    row = await conn.fetchrow(repo.MEMBER, org_id, who.account_id)
    if row is None:
        raise NotFound(f"no organisation {org_id}")
    role = str(row["role"])
    if RANK[role] < RANK[least]:
        raise Forbidden(f"your role in this organisation ({role}) does not allow this; {least} or above"
                        " needed", code="org_role")
    return role


async def _audit(conn: asyncpg.Connection, org_id: str, actor: str, action: str, subject: str = "",
                 **detail: Any) -> None:
    await conn.execute(repo.INSERT_AUDIT, org_id, actor, action, subject, _json.encode(detail).decode())


def _as_org(org_id: str) -> Principal:
    """The org as the acting account, for the plain key functions (which check `account_id` ownership)."""
    return Principal(account_id=org_id, email="", role="user")


def _org_out(row: Any, role: str) -> OrgOut:
    return OrgOut(id=row["id"], name=row["name"], time_zone=row["time_zone"],
                  default_allowance_micros=row["default_allowance_micros"], status=row["status"],
                  created_by=row["created_by"], created_at=row["created_at"], my_role=role)


def _member_out(row: Any, email: str = "") -> MemberOut:
    return MemberOut(user_id=row["user_id"], email=email or row.get("email", ""), role=row["role"],
                     allowance_micros=row["allowance_micros"], joined_at=row["joined_at"])


def _invitation_out(row: Any) -> InvitationOut:
    status = row["status"]
    if status == "pending" and row["expires_at"] <= datetime.now(UTC):
        status = "expired"
    return InvitationOut(id=row["id"], org_id=row["org_id"], email=row["email_norm"], role=row["role"],
                         allowance_micros=row["allowance_micros"], status=status,
                         invited_by=row["invited_by"],
                         expires_at=row["expires_at"], created_at=row["created_at"])


async def _republish_keys(ctx: Ctx, org_id: str, user_id: str | None) -> None:
    """Gateways enforce a member's allowance from the key snapshot: after a change, every affected key's
    snapshot is published again (Redis + key.changed), like any key edit."""
    async with ctx.pool.acquire() as conn:
        ids = [r["id"] for r in await conn.fetch(repo.ORG_KEY_IDS, org_id, user_id)]
    for key_id in ids:
        await apikeys.publish_key_id(ctx, key_id)


async def _changed(ctx: Ctx, org_id: str, user_id: str, role: str, allowance: int, actor: str,
                   removed: bool = False) -> None:
    await ctx.publisher.publish(ev.OrgMemberChanged(
        org_id=org_id, user_id=user_id, role=role, allowance_micros=allowance, removed=removed,
        actor_id=actor))


# --- the org itself -----------------------------------------------------------------------------------------


async def create_org(ctx: Ctx, who: Principal, data: OrgCreateIn) -> OrgOut:
    """A new org with the caller as its owner. Its id is also its wallet's account id in billing."""
    tz = _time_zone(data.time_zone)
    org_id = new_org_id()
    async with ctx.pool.acquire() as conn, conn.transaction():
        creator = await conn.fetchrow(repo.ACCOUNT_BY_ID, who.account_id)
        await conn.execute(repo.INSERT_ORG_ACCOUNT, org_id, creator["group"])
        await conn.execute(repo.INSERT_ORG, org_id, data.name.strip(), data.default_allowance_micros, tz,
                           who.account_id)
        await conn.execute(repo.INSERT_MEMBER, org_id, who.account_id, "owner", 0)
        await _audit(conn, org_id, who.account_id, "org.created", org_id, name=data.name.strip(),
                     time_zone=tz, default_allowance_micros=data.default_allowance_micros)
        row = await conn.fetchrow(repo.ORG_BY_ID, org_id)
    await _changed(ctx, org_id, who.account_id, "owner", 0, who.account_id)
    log.info("org created", extra={"org_id": org_id, "actor": who.account_id})
    return _org_out(row, "owner")


async def my_orgs(ctx: Ctx, who: Principal) -> list[OrgOut]:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(repo.ORGS_OF_USER, who.account_id)
    return [_org_out(r, r["role"]) for r in rows]


async def get_org(ctx: Ctx, who: Principal, org_id: str) -> OrgOut:
    async with ctx.pool.acquire() as conn:
        role = await _role(conn, who, org_id, VIEW)
        row = await conn.fetchrow(repo.ORG_BY_ID, org_id)
    return _org_out(row, role)


async def update_org(ctx: Ctx, who: Principal, org_id: str, patch: OrgPatch) -> OrgOut:
    async with ctx.pool.acquire() as conn, conn.transaction():
        role = await _role(conn, who, org_id, MANAGE, lock=True)
        row = await conn.fetchrow(repo.ORG_BY_ID, org_id)
        unset = msgspec.UNSET
        name = row["name"] if patch.name is unset else patch.name.strip()
        tz = row["time_zone"] if patch.time_zone is unset else _time_zone(patch.time_zone)
        default = (row["default_allowance_micros"] if patch.default_allowance_micros is unset
                   else patch.default_allowance_micros)
        await conn.execute(repo.UPDATE_ORG, org_id, name, default, tz)
        changes = {k: v for k, v in (("name", name), ("time_zone", tz), ("default_allowance_micros", default))
                   if v != row[k]}
        if changes:
            await _audit(conn, org_id, who.account_id, "org.updated", org_id, **changes)
        row = await conn.fetchrow(repo.ORG_BY_ID, org_id)
    if "time_zone" in changes:
        await _republish_keys(ctx, org_id, None)
    return _org_out(row, role)


async def audit_log(ctx: Ctx, who: Principal, org_id: str, before: int | None, limit: int) -> list[AuditOut]:
    async with ctx.pool.acquire() as conn:
        await _role(conn, who, org_id, MANAGE)
        rows = await conn.fetch(repo.AUDIT_OF_ORG, org_id, before, limit)
    return [AuditOut(id=r["id"], actor_id=r["actor_id"], action=r["action"], subject_id=r["subject_id"],
                     detail=msgspec.json.decode(r["detail"]), at=r["at"]) for r in rows]


# --- members ------------------------------------------------------------------------------------------------


def allowance_key(ctx: Ctx, org_id: str, user_id: str, time_zone: str, now: datetime) -> str:
    """Where gateways count a member's spend this month (services/gateway/admission.py `Allowance.key`): the
    month in the org's time zone, so a new month starts from zero at the org's midnight."""
    month = now.astimezone(ZoneInfo(time_zone)).strftime("%Y%m")
    return f"{ctx.keys.ns}:allow:{org_id}:{user_id}:{month}"


async def members(ctx: Ctx, who: Principal, org_id: str) -> list[MemberOut]:
    async with ctx.pool.acquire() as conn:
        await _role(conn, who, org_id, VIEW)
        rows = await conn.fetch(repo.MEMBERS, org_id)
        org = await conn.fetchrow(repo.ORG_BY_ID, org_id)
    now = datetime.now(UTC)
    pipe = ctx.redis.pipeline(transaction=False)
    for r in rows:
        pipe.hget(allowance_key(ctx, org_id, r["user_id"], org["time_zone"], now), "used")
    used = await pipe.execute()
    return [msgspec.structs.replace(_member_out(r), allowance_used_micros=int(u or 0))
            for r, u in zip(rows, used, strict=True)]


async def update_member(ctx: Ctx, who: Principal, org_id: str, user_id: str, patch: MemberPatch) -> MemberOut:
    """Role and monthly allowance. Admins manage admins, members and viewers; owners manage everyone."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        my_role = await _role(conn, who, org_id, MANAGE, lock=True)
        row = await conn.fetchrow(repo.MEMBER, org_id, user_id)
        if row is None:
            raise NotFound(f"no member {user_id} in this organisation")
        role = row["role"] if patch.role is msgspec.UNSET else patch.role
        allowance = (row["allowance_micros"] if patch.allowance_micros is msgspec.UNSET
                     else patch.allowance_micros)
        if "owner" in (role, row["role"]) and role != row["role"] and my_role != "owner":
            raise Forbidden("only an owner makes or unmakes owners", code="org_role")
        if row["role"] == "owner" and my_role != "owner":
            raise Forbidden("only an owner changes an owner", code="org_role")
        if row["role"] == "owner" and role != "owner" and await conn.fetchval(repo.COUNT_OWNERS, org_id) <= 1:
            raise Conflict("an organisation keeps at least one owner; make someone else owner first")
        await conn.execute(repo.UPDATE_MEMBER, org_id, user_id, role, allowance)
        if role != row["role"]:
            await _audit(conn, org_id, who.account_id, "member.role_changed", user_id, old=row["role"],
                         new=role)
        if allowance != row["allowance_micros"]:
            await _audit(conn, org_id, who.account_id, "member.allowance_changed", user_id,
                         old=row["allowance_micros"], new=allowance)
        old, row = row, await conn.fetchrow(repo.MEMBER, org_id, user_id)
        email = (await conn.fetchrow(repo.ACCOUNT_BY_ID, user_id))["email"]
    if allowance != old["allowance_micros"]:
        await _republish_keys(ctx, org_id, user_id)
    await _changed(ctx, org_id, user_id, role, allowance, who.account_id)
    return _member_out(row, email)


async def remove_member(ctx: Ctx, who: Principal, org_id: str, user_id: str) -> int:
    """Remove a member (or leave, when `user_id` is the caller). Their org keys are disabled and re-published,
    so gateways refuse them at once. Returns how many keys stopped."""
    leaving = user_id == who.account_id
    async with ctx.pool.acquire() as conn, conn.transaction():
        my_role = await _role(conn, who, org_id, VIEW if leaving else MANAGE, lock=True)
        row = await conn.fetchrow(repo.MEMBER, org_id, user_id)
        if row is None:
            raise NotFound(f"no member {user_id} in this organisation")
        if row["role"] == "owner" and not leaving and my_role != "owner":
            raise Forbidden("only an owner removes an owner", code="org_role")
        if row["role"] == "owner" and await conn.fetchval(repo.COUNT_OWNERS, org_id) <= 1:
            raise Conflict("an organisation keeps at least one owner; make someone else owner first")
        await conn.execute(repo.DELETE_MEMBER, org_id, user_id)
        stopped = [r["id"] for r in await conn.fetch(repo.DISABLE_MEMBER_KEYS, org_id, user_id)]
        await _audit(conn, org_id, who.account_id, "member.left" if leaving else "member.removed", user_id,
                     role=row["role"], keys_disabled=stopped)
    # After the commit, so the snapshots say "disabled" (the key.changed path re-reads the committed row).
    for key_id in stopped:
        await apikeys.publish_key_id(ctx, key_id)
    await _changed(ctx, org_id, user_id, row["role"], row["allowance_micros"], who.account_id, removed=True)
    log.info("org member removed", extra={"org_id": org_id, "user_id": user_id, "actor": who.account_id,
                                          "keys_disabled": len(stopped)})
    return len(stopped)


async def membership(ctx: Ctx, org_id: str, user_id: str) -> MembershipOut:
    """For billing and usage (internal): a person's role in an org, or NotFound."""
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow(repo.MEMBER, org_id, user_id)
        org = await conn.fetchrow(repo.ORG_BY_ID, org_id) if row is not None else None
    if row is None or org is None:
        raise NotFound(f"{user_id} is not a member of {org_id}")
    return MembershipOut(org_id=org_id, user_id=user_id, role=row["role"],
                         allowance_micros=row["allowance_micros"], time_zone=org["time_zone"])


# --- invitations --------------------------------------------------------------------------------------------


async def invite(ctx: Ctx, who: Principal, org_id: str, data: InviteIn) -> InvitationWithLink:
    """An invitation by e-mail (mailed through the notifier; only that address may accept) or by link (anyone
    holding it, once). The link's token is returned this once and stored only as its hash."""
    email = accounts.normalize_email(data.email) if data.email else ""
    token = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(seconds=ctx.settings.org_invite_ttl_s)
    inv_id = "inv_" + secrets.token_hex(8)
    async with ctx.pool.acquire() as conn, conn.transaction():
        await _role(conn, who, org_id, MANAGE)
        org = await conn.fetchrow(repo.ORG_BY_ID, org_id)
        row = await conn.fetchrow(repo.INSERT_INVITATION, inv_id, org_id, email, data.role,
                                  data.allowance_micros, accounts.token_hash(token), who.account_id, expires)
        await _audit(conn, org_id, who.account_id, "invitation.created", inv_id, email=email, role=data.role,
                     allowance_micros=data.allowance_micros)
    url = f"{ctx.settings.public_url.rstrip('/')}/orgs/join?token={token}"
    if email:
        await ctx.publisher.publish(ev.OrgMemberInvited(
            org_id=org_id, org_name=org["name"], invitation_id=inv_id, email=email, role=data.role,
            invite_url=url, expires_at=expires, invited_by=who.account_id))
    return InvitationWithLink(invitation=_invitation_out(row), url=url)


async def invitations(ctx: Ctx, who: Principal, org_id: str) -> list[InvitationOut]:
    async with ctx.pool.acquire() as conn:
        await _role(conn, who, org_id, MANAGE)
        rows = await conn.fetch(repo.INVITATIONS_OF_ORG, org_id)
    return [_invitation_out(r) for r in rows]


async def revoke_invitation(ctx: Ctx, who: Principal, org_id: str, inv_id: str) -> InvitationOut:
    async with ctx.pool.acquire() as conn, conn.transaction():
        await _role(conn, who, org_id, MANAGE)
        row = await conn.fetchrow(repo.INVITATION_BY_ID_FOR_UPDATE, inv_id, org_id)
        if row is None:
            raise NotFound(f"no invitation {inv_id}")
        if row["status"] != "pending":
            raise Conflict(f"the invitation is already {row['status']}")
        row = await conn.fetchrow(repo.ANSWER_INVITATION, inv_id, "revoked", who.account_id)
        await _audit(conn, org_id, who.account_id, "invitation.revoked", inv_id, email=row["email_norm"])
    return _invitation_out(row)


async def _open_invitation(conn: asyncpg.Connection, who: Principal, token: str) -> Any:
    """The pending invitation behind a token, if this person may answer it (locked for the answer)."""
    row = await conn.fetchrow(repo.INVITATION_BY_TOKEN_FOR_UPDATE, accounts.token_hash(token))
    if row is None:
        raise InvalidInput({"token": "this invitation link is invalid"})
    if row["status"] != "pending":
        raise InvalidInput({"token": f"this invitation was already {row['status']}"})
    if row["expires_at"] <= datetime.now(UTC):
        raise InvalidInput({"token": "this invitation has expired; ask for a new one"})
    if row["email_norm"] and row["email_norm"] != who.email.strip().lower():
        raise Forbidden("this invitation was sent to another e-mail address", code="invitation_not_yours")
    return row


async def accept(ctx: Ctx, who: Principal, token: str) -> MemberOut:
    async with ctx.pool.acquire() as conn, conn.transaction():
        inv = await _open_invitation(conn, who, token)
        org_id = inv["org_id"]
        org = await conn.fetchrow(repo.ORG_BY_ID, org_id)
        await conn.fetchval(repo.LOCK_ORG, org_id)
        allowance = inv["allowance_micros"]
        if allowance is None:
            allowance = org["default_allowance_micros"]
        if await conn.fetchrow(repo.INSERT_MEMBER, org_id, who.account_id, inv["role"], allowance) is None:
            raise Conflict("you are already a member of this organisation")
        await conn.execute(repo.ANSWER_INVITATION, inv["id"], "accepted", who.account_id)
        await _audit(conn, org_id, who.account_id, "member.joined", who.account_id, invitation_id=inv["id"],
                     role=inv["role"], allowance_micros=allowance)
        row = await conn.fetchrow(repo.MEMBER, org_id, who.account_id)
    await _changed(ctx, org_id, who.account_id, inv["role"], allowance, who.account_id)
    return _member_out(row, who.email)


async def decline(ctx: Ctx, who: Principal, token: str) -> InvitationOut:
    async with ctx.pool.acquire() as conn, conn.transaction():
        inv = await _open_invitation(conn, who, token)
        row = await conn.fetchrow(repo.ANSWER_INVITATION, inv["id"], "declined", who.account_id)
        await _audit(conn, inv["org_id"], who.account_id, "invitation.declined", inv["id"])
    return _invitation_out(row)


# --- the org's keys -----------------------------------------------------------------------------------------


async def _org_key(conn: asyncpg.Connection, who: Principal, org_id: str, key_id: str) -> Any:
    """A member may act on their own org keys; owners and admins on every org key."""
    role = await _role(conn, who, org_id, KEYS)
    row = await conn.fetchrow(repo.KEY_BY_ID, key_id)
    if row is None or row["account_id"] != org_id or row["status"] == "deleted":
        raise NotFound(f"no key {key_id}")
    if RANK[role] < RANK[MANAGE] and row["user_id"] != who.account_id:
        raise NotFound(f"no key {key_id}")
    return row


async def keys(ctx: Ctx, who: Principal, org_id: str, *, everyone: bool) -> KeyPage:
    """A member's own org keys; owners and admins may ask for everyone's."""
    async with ctx.pool.acquire() as conn:
        role = await _role(conn, who, org_id, KEYS)
        holder = None if (everyone and RANK[role] >= RANK[MANAGE]) else who.account_id
        rows = await conn.fetch(repo.ORG_KEYS, org_id, holder)
    used = await apikeys._quota_used(ctx, [r["id"] for r in rows])
    return KeyPage(items=[apikeys.key_out(r, used[r["id"]]) for r in rows], total=len(rows))


async def create_key(ctx: Ctx, who: Principal, org_id: str, data: KeyCreateIn) -> tuple[KeyOut, str]:
    """A key the org pays for, held by the caller; the secret is returned this once."""
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            await _role(conn, who, org_id, KEYS)
            account = await conn.fetchrow(repo.ACCOUNT_BY_ID, org_id)
            key_id, secret = await apikeys.insert_key(conn, ctx, _as_org(org_id), account, data,
                                                      user_id=who.account_id)
            await _audit(conn, org_id, who.account_id, "key.created", key_id, label=data.label)
        row = await conn.fetchrow(repo.KEY_BY_ID, key_id)
    await apikeys.publish_key_id(ctx, key_id)
    return apikeys.key_out(row, 0), secret


async def update_key(ctx: Ctx, who: Principal, org_id: str, key_id: str, patch: KeyPatch) -> KeyOut:
    async with ctx.pool.acquire() as conn:
        row = await _org_key(conn, who, org_id, key_id)
        holder_left = await conn.fetchrow(repo.MEMBER, org_id, row["user_id"]) is None
        if holder_left and patch.status == "active":
            # Removal disabled it; it must not come back through an admin's click.
            raise Conflict("the key's holder is no longer a member of this organisation")
        fields = sorted(f for f in patch.__struct_fields__ if getattr(patch, f) is not msgspec.UNSET)
        await _audit(conn, org_id, who.account_id, "key.changed", key_id, fields=fields)
    return await apikeys.update_key(ctx, _as_org(org_id), key_id, patch)


async def rotate_key(ctx: Ctx, who: Principal, org_id: str, key_id: str, grace_seconds: int
                     ) -> tuple[KeyOut, str]:
    async with ctx.pool.acquire() as conn:
        row = await _org_key(conn, who, org_id, key_id)
        if await conn.fetchrow(repo.MEMBER, org_id, row["user_id"]) is None:
            raise Conflict("the key's holder is no longer a member of this organisation")
        await _audit(conn, org_id, who.account_id, "key.rotated", key_id, grace_seconds=grace_seconds)
    return await apikeys.rotate_key(ctx, _as_org(org_id), key_id, grace_seconds)


async def delete_key(ctx: Ctx, who: Principal, org_id: str, key_id: str) -> None:
    async with ctx.pool.acquire() as conn:
        await _org_key(conn, who, org_id, key_id)
        await _audit(conn, org_id, who.account_id, "key.deleted", key_id)
    await apikeys.delete_key(ctx, _as_org(org_id), key_id)
