"""API keys: create, list, change, rotate, delete. Only a sha256 of each secret and a short prefix are stored.

Every change ends with the key's snapshot written to Redis and `key.changed` published (deleted keys too), so
a gateway worker refuses a disabled key as soon as the event reaches it. A change is announced right after its
commit, on the connection that made it, before the log line, the quota read and the answer: the time from a
click on "disable" to every gateway worker refusing the key is the commit plus one read, one Redis write and
one acked publish.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from redis.exceptions import RedisError

from services.keys import repo, snapshots, validation
from services.keys.context import Ctx, Principal
from services.keys.errors import InvalidInput
from services.keys.schemas import KeyCreateIn, KeyOut, KeyPage, KeyPatch
from shared import events as ev
from shared.crypto import hash_api_key
from shared.web import Conflict, NotFound

log = logging.getLogger("faregate.keys.apikeys")

SECRET_PREFIX = "sk-"  # noqa: S105 (a prefix, not a secret)
PREFIX_CHARS = 8  # "sk-" + 5 random characters: enough to recognise a key in a list, useless to guess it


def new_secret() -> str:
    """`sk-` + 256 bits from the OS's CSPRNG, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


# --- reading ------------------------------------------------------------------------------------------------


def _status(row: Any, now: datetime) -> str:
    if row["status"] == "active" and row["expires_at"] is not None and row["expires_at"] <= now:
        return "expired"
    return str(row["status"])


def key_out(row: Any, used: int, grace_until: datetime | None = None) -> KeyOut:
    quota = int(row["quota_micros"])
    return KeyOut(
        id=row["id"], account_id=row["account_id"], prefix=row["prefix"], label=row["label"],
        group=row["group"],
        status=_status(row, datetime.now(UTC)), quota_micros=quota, quota_used_micros=used,
        quota_left_micros=max(quota - used, 0) if quota else None, models=list(row["models"]),
        ip_allow=list(row["ip_allow"]), expires_at=row["expires_at"], rpm_limit=row["rpm_limit"],
        tpm_limit=row["tpm_limit"], concurrency_limit=row["concurrency_limit"],
        last_used_at=row["last_used_at"],
        created_at=row["created_at"], updated_at=row["updated_at"], previous_secret_valid_until=grace_until,
    )


async def _quota_used(ctx: Ctx, key_ids: list[str]) -> dict[str, int]:
    """What billing has debited against each key's quota (the spend guard's `used`; 0 when never charged)."""
    if not key_ids:
        return {}
    pipe = ctx.redis.pipeline(transaction=False)
    for kid in key_ids:
        pipe.hget(ctx.keys.quota(kid), "used")
    values = await pipe.execute()
    return {kid: int(v) if v is not None else 0 for kid, v in zip(key_ids, values, strict=True)}


async def _visible_row(conn: asyncpg.Connection, who: Principal, key_id: str, *, lock: bool = False) -> Any:
    """The key if `who` may see it. Someone else's key is "not found", exactly like a key that does not exist,
    so ids cannot be probed."""
    row = await conn.fetchrow(repo.KEY_BY_ID_FOR_UPDATE if lock else repo.KEY_BY_ID, key_id)
    foreign = not who.is_admin and row is not None and row["account_id"] != who.account_id
    if row is None or row["status"] == "deleted" or foreign:
        raise NotFound(f"no key {key_id}")
    return row


async def _grace_of(conn: asyncpg.Connection, key_id: str) -> datetime | None:
    rows = await conn.fetch(repo.RETIRED_OF_KEY, key_id)
    live = [r["grace_until"] for r in rows if r["grace_until"] > datetime.now(UTC)]
    return max(live) if live else None


async def get_key(ctx: Ctx, who: Principal, key_id: str) -> KeyOut:
    async with ctx.pool.acquire() as conn:
        row = await _visible_row(conn, who, key_id)
        grace = await _grace_of(conn, key_id)
    return key_out(row, (await _quota_used(ctx, [key_id]))[key_id], grace)


async def list_keys(ctx: Ctx, who: Principal, *, everyone: bool = False, account_id: str | None = None,
                    q: str = "", limit: int = 50, offset: int = 0) -> KeyPage:
    """A person's own keys; an admin may ask for everyone's or one account's."""
    owner: str | None = who.account_id
    if who.is_admin and account_id:
        owner = account_id
    elif who.is_admin and everyone:
        owner = None
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(repo.LIST_KEYS, owner, q, limit, offset)
    used = await _quota_used(ctx, [r["id"] for r in rows])
    return KeyPage(items=[key_out(r, used[r["id"]]) for r in rows], total=rows[0]["total"] if rows else 0)


# --- snapshots for gateways ---------------------------------------------------------------------------------


async def snapshot_by_hash(ctx: Ctx, key_hash: str) -> ev.KeySnapshot | None:
    """What a gateway should know about a secret's hash: a current key, a rotated-out one (with its grace), or
    nothing. Writes it to Redis as well, so the next miss is served there."""
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow(repo.KEY_BY_HASH, key_hash)
        snap: ev.KeySnapshot | None = None
        if row is not None:
            snap = snapshots.key_snapshot(row)
        else:
            old = await conn.fetchrow(repo.RETIRED_BY_HASH, key_hash)
            if old is not None:
                snap = snapshots.retired_snapshot(old, old["retired_hash"], old["grace_until"],
                                                  retired=old["retired_at"] is not None)
    if snap is not None:
        try:
            await snapshots.put_key(ctx, snap)
        except RedisError as exc:  # gateways ask here precisely when Redis fails them: answer anyway
            log.warning("could not refill Redis", extra={"key_id": snap.key_id, "error": repr(exc)})
    return snap


async def _announce(ctx: Ctx, row: Any) -> ev.KeySnapshot:
    """Publish a key's snapshot (Redis, then key.changed) from a row read with repo.KEY_WITH_RETIRED, and the
    snapshots of its rotated-out secrets still in their grace period, which follow the key's settings (a
    disabled key's old secret stops too)."""
    snap = snapshots.key_snapshot(row)
    await snapshots.publish_key(ctx, snap)
    for old_hash, grace_until in zip(row["retired_hashes"], row["retired_graces"], strict=True):
        await snapshots.publish_key(ctx, snapshots.retired_snapshot(row, old_hash, grace_until, retired=False))
    return snap


def _grace_in(row: Any) -> datetime | None:
    """When the latest rotated-out secret of a KEY_WITH_RETIRED row stops working (None: none still does)."""
    now = datetime.now(UTC)
    live = [g for g in row["retired_graces"] if g > now]
    return max(live) if live else None


async def _publish_row(ctx: Ctx, key_id: str) -> ev.KeySnapshot:
    """Re-read the committed row (so the last of two concurrent edits publishes the final state) and publish
    it with its rotated-out secrets."""
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow(repo.KEY_WITH_RETIRED, key_id)
    return await _announce(ctx, row)


async def publish_key_id(ctx: Ctx, key_id: str) -> ev.KeySnapshot:
    return await _publish_row(ctx, key_id)


async def publish_keys_of_account(ctx: Ctx, account_id: str) -> int:
    """After an account's status changed: every key's snapshot carries the new account_status."""
    async with ctx.pool.acquire() as conn:
        ids = [r["id"] for r in await conn.fetch(repo.KEYS_OF_ACCOUNT, account_id)]
    for kid in ids:
        await _publish_row(ctx, kid)
    return len(ids)


async def republish_all(ctx: Ctx) -> int:
    """Rewrite every live key's snapshot in Redis (after Redis lost its data, or at an operator's request)."""
    async with ctx.pool.acquire() as conn:
        ids = [r["id"] for r in await conn.fetch(repo.ALL_LIVE_KEY_IDS)]
    for kid in ids:
        await _publish_row(ctx, kid)
    return len(ids)


# --- writing ------------------------------------------------------------------------------------------------


async def _allowed_group(conn: asyncpg.Connection, who: Principal, account_group: str, group: str) -> str:
    row = await conn.fetchrow(repo.GROUP_BY_NAME, group)
    if row is None:
        raise InvalidInput({"group": f"no group {group}"})
    if not who.is_admin and group != account_group and not row["selectable"]:
        raise InvalidInput({"group": f"group {group} is not open to you"})
    return group


async def _known_models(conn: asyncpg.Connection) -> set[str]:
    return {r["name"] for r in await conn.fetch(repo.ALL_MODELS)}


async def insert_key(conn: asyncpg.Connection, ctx: Ctx, who: Principal, account: Any,
                     data: KeyCreateIn, *, user_id: str | None = None) -> tuple[str, str]:
    """Insert a key for `account` inside the caller's transaction; returns (key id, secret). `user_id`: the
    person holding it when that is not the account itself (an organisation's member)."""
    if await conn.fetchval(repo.COUNT_LIVE_KEYS, account["id"]) >= ctx.settings.max_keys_per_account:
        raise Conflict(f"an account may hold at most {ctx.settings.max_keys_per_account} keys")
    group = await _allowed_group(conn, who, account["group"], data.group or account["group"])
    model_list = validation.models(data.models, await _known_models(conn)) if data.models else []
    ips = validation.ip_allow_list(data.ip_allow)
    expires = validation.expiry(data.expires_at)
    s = ctx.settings
    secret = new_secret()
    key_id = new_key_id()
    await conn.execute(
        repo.INSERT_KEY, key_id, account["id"], user_id or account["id"], hash_api_key(secret),
        secret[:PREFIX_CHARS],
        data.label.strip() or "key", group, data.quota_micros, model_list, ips, expires,
        s.default_rpm_limit if data.rpm_limit is None else data.rpm_limit,
        s.default_tpm_limit if data.tpm_limit is None else data.tpm_limit,
        s.default_concurrency_limit if data.concurrency_limit is None else data.concurrency_limit,
    )
    return key_id, secret


async def create_key(ctx: Ctx, who: Principal, data: KeyCreateIn, *, account_id: str | None = None
                     ) -> tuple[KeyOut, str]:
    """A new key for the caller (or, for an admin, for `account_id`); the secret is returned this once."""
    owner = account_id if (who.is_admin and account_id) else who.account_id
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            account = await conn.fetchrow(repo.ACCOUNT_BY_ID, owner)
            if account is None:
                raise NotFound(f"no account {owner}")
            key_id, secret = await insert_key(conn, ctx, who, account, data)
        row = await conn.fetchrow(repo.KEY_WITH_RETIRED, key_id)
        await _announce(ctx, row)
    log.info("key created", extra={"key_id": key_id, "account_id": owner, "actor": who.account_id})
    return key_out(row, 0), secret


def _status_only(patch: KeyPatch) -> bool:
    unset = msgspec.UNSET
    return patch.status is not unset and all(
        getattr(patch, f) is unset for f in patch.__struct_fields__ if f != "status")


async def _apply_patch(conn: asyncpg.Connection, who: Principal, key_id: str, patch: KeyPatch) -> None:
    """Validate and write a patch inside the caller's transaction, the key's row locked meanwhile."""
    row = await _visible_row(conn, who, key_id, lock=True)
    unset = msgspec.UNSET
    label = row["label"] if patch.label is unset else patch.label.strip()
    group = row["group"]
    if patch.group is not unset and patch.group != row["group"]:
        account = await conn.fetchrow(repo.ACCOUNT_BY_ID, row["account_id"])
        group = await _allowed_group(conn, who, account["group"], patch.group)
    status = row["status"] if patch.status is unset else patch.status
    models = list(row["models"])
    if patch.models is not unset:
        models = validation.models(patch.models, await _known_models(conn)) if patch.models else []
    ips = list(row["ip_allow"])
    if patch.ip_allow is not unset:
        ips = validation.ip_allow_list(patch.ip_allow)
    expires = row["expires_at"] if patch.expires_at is unset else validation.expiry(patch.expires_at)

    def pick(value: Any, column: str) -> Any:
        return row[column] if value is unset else value

    await conn.execute(
        repo.UPDATE_KEY, key_id, label, group, status, pick(patch.quota_micros, "quota_micros"),
        models, ips, expires, pick(patch.rpm_limit, "rpm_limit"), pick(patch.tpm_limit, "tpm_limit"),
        pick(patch.concurrency_limit, "concurrency_limit"),
    )


async def update_key(ctx: Ctx, who: Principal, key_id: str, patch: KeyPatch) -> KeyOut:
    """Change a key and announce it. Enabling or disabling, the console's revocation, is one self-committing
    statement (it needs no validation beyond who may see the key); other edits run in a transaction that locks
    the row while they are validated."""
    async with ctx.pool.acquire() as conn:
        if _status_only(patch):
            owner = None if who.is_admin else who.account_id
            if await conn.fetchval(repo.SET_KEY_STATUS, key_id, patch.status, owner) is None:
                raise NotFound(f"no key {key_id}")
        else:
            async with conn.transaction():
                await _apply_patch(conn, who, key_id, patch)
        # Committed: re-read (so the last of two concurrent edits publishes the final state) and announce at
        # once, on this connection, before anything else; it goes back to the pool (a reset round trip) after.
        row = await conn.fetchrow(repo.KEY_WITH_RETIRED, key_id)
        await _announce(ctx, row)
    changed = sorted(f for f in patch.__struct_fields__ if getattr(patch, f) is not msgspec.UNSET)
    log.info("key changed", extra={"key_id": key_id, "account_id": row["account_id"], "actor": who.account_id,
                                   "fields": ",".join(changed), "status": row["status"]})
    return key_out(row, (await _quota_used(ctx, [key_id]))[key_id], _grace_in(row))


async def delete_key(ctx: Ctx, who: Principal, key_id: str) -> None:
    """Irreversible: the row stays (status deleted) so usage history still names it, but no secret works."""
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            await _visible_row(conn, who, key_id, lock=True)
            await conn.execute(repo.DELETE_KEY, key_id)
            retired = [r["key_hash"] for r in await conn.fetch(repo.RETIRE_ALL_OF_KEY, key_id)]
        row = await conn.fetchrow(repo.KEY_BY_ID, key_id)
    await snapshots.publish_key(ctx, snapshots.key_snapshot(row))
    log.info("key deleted", extra={"key_id": key_id, "account_id": row["account_id"],
                                   "actor": who.account_id})
    for old_hash in retired:
        old = await _retired_row(ctx, old_hash)
        await snapshots.publish_key(ctx, snapshots.retired_snapshot(old, old_hash, old["grace_until"],
                                                                    retired=True))


async def _retired_row(ctx: Ctx, key_hash: str) -> Any:
    async with ctx.pool.acquire() as conn:
        return await conn.fetchrow(repo.RETIRED_BY_HASH, key_hash)


async def rotate_key(ctx: Ctx, who: Principal, key_id: str, grace_seconds: int) -> tuple[KeyOut, str]:
    """A new secret with the same settings; the old one keeps working `grace_seconds` (0: stops at once)."""
    now = datetime.now(UTC)
    grace_until = now + timedelta(seconds=grace_seconds)
    secret = new_secret()
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            row = await _visible_row(conn, who, key_id, lock=True)
            old_hash = row["key_hash"]
            # A secret rotated out earlier and still in its grace stops now: only the latest two ever work.
            ended = [r["key_hash"] for r in await conn.fetch(repo.RETIRE_ALL_OF_KEY, key_id)]
            await conn.execute(repo.INSERT_RETIRED, old_hash, key_id, grace_until,
                               now if grace_seconds == 0 else None)
            await conn.execute(repo.SET_KEY_HASH, key_id, hash_api_key(secret), secret[:PREFIX_CHARS])
        row = await conn.fetchrow(repo.KEY_BY_ID, key_id)
    # The new secret's snapshot names the old hash and its grace (the key.changed contract); the old hash also
    # gets its own snapshot, expiring at the end of the grace, for gateways that look it up by itself.
    snap = msgspec.structs.replace(snapshots.key_snapshot(row), grace_until=grace_until)
    await snapshots.publish_key(ctx, snap, previous_hash=old_hash)
    await snapshots.publish_key(ctx, snapshots.retired_snapshot(row, old_hash, grace_until,
                                                                retired=grace_seconds == 0))
    log.info("key rotated", extra={"key_id": key_id, "account_id": row["account_id"], "actor": who.account_id,
                                   "grace_seconds": grace_seconds})
    for h in ended:
        old = await _retired_row(ctx, h)
        await snapshots.publish_key(ctx, snapshots.retired_snapshot(old, h, old["grace_until"], retired=True))
    return key_out(row, (await _quota_used(ctx, [key_id]))[key_id],
                   grace_until if grace_seconds else None), secret
