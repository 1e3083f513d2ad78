"""Accounts and sessions: register, log in and out, password resets, roles, and admin user management.

A session is a random cookie value; only its sha256 is stored. It ends after `session_idle_s` without a
request (and after `session_max_s` in any case). The CSRF token is derived from the session, so it needs no
storage.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from prometheus_client import Counter

from services.keys import apikeys, passwords, repo, throttle
from services.keys.context import Ctx, Principal
from services.keys.errors import InvalidInput, NotLoggedIn, TooManyAttempts
from services.keys.schemas import AccountOut, AccountPage, AccountPatch, KeyCreateIn
from shared import console_auth
from shared import events as ev
from shared.web import Conflict, Forbidden, NotFound, Unauthorized

log = logging.getLogger("faregate.keys.accounts")

LOGINS = Counter("faregate_keys_logins_total", "Login attempts by outcome", ["outcome"])
RESETS = Counter("faregate_keys_password_resets_total", "Password-reset requests by outcome", ["outcome"])

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalize_email(email: str) -> str:
    norm = email.strip().lower()
    if not _EMAIL.match(norm):
        raise InvalidInput({"email": "not an e-mail address"})
    return norm


def check_password_policy(ctx: Ctx, password: str, field: str = "password") -> None:
    if len(password) < ctx.settings.min_password_length:
        raise InvalidInput({field: f"at least {ctx.settings.min_password_length} characters"})


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(ctx: Ctx, session_hash: str) -> str:
    # One formula for keys, which sets the cookie, and the services that check it (shared/console_auth.py).
    return console_auth.csrf_token(ctx.common.secret_key, session_hash)


def account_out(row: Any) -> AccountOut:
    return AccountOut(id=row["id"], email=row["email"], role=row["role"], status=row["status"],
                      group=row["group"], created_at=row["created_at"])


def new_account_id() -> str:
    return "acct_" + secrets.token_hex(8)


# --- registration -------------------------------------------------------------------------------------------


async def register(ctx: Ctx, email: str, password: str, *, role: str = "user", group: str = "default",
                   default_key: bool = True) -> tuple[Any, str | None, str | None]:
    """Create an account (and its default API key); returns (account row, key id, key secret)."""
    norm = normalize_email(email)
    check_password_policy(ctx, password)
    pw_hash = await passwords.hash_password(password)
    key_id = secret = None
    async with ctx.pool.acquire() as conn, conn.transaction():
        if await conn.fetchrow(repo.GROUP_BY_NAME, group) is None:
            raise InvalidInput({"group": f"no group {group}"})
        account = await conn.fetchrow(repo.INSERT_ACCOUNT, new_account_id(), email.strip(), norm, pw_hash,
                                      role, group)
        if account is None:
            raise Conflict("an account with this e-mail exists", field="email")
        if default_key:
            owner = Principal(account_id=account["id"], email=norm, role=role)
            key_id, secret = await apikeys.insert_key(conn, ctx, owner, account, KeyCreateIn(label="default"))
    await ctx.publisher.publish(ev.AccountRegistered(account_id=account["id"], email=account["email"]))
    log.info("account registered", extra={"account_id": account["id"], "role": role})
    if key_id is not None:
        await apikeys.publish_key_id(ctx, key_id)
    return account, key_id, secret


# --- sessions -----------------------------------------------------------------------------------------------


async def new_session(ctx: Ctx, account_id: str, client_ip: str) -> str:
    token = secrets.token_urlsafe(32)
    async with ctx.pool.acquire() as conn:
        await conn.execute(repo.INSERT_SESSION, token_hash(token), account_id, client_ip)
    return token


async def login(ctx: Ctx, email: str, password: str, client_ip: str) -> tuple[Any, str]:
    """Check the password (throttled per account and per address); returns (account row, session token)."""
    norm = email.strip().lower()
    try:
        await throttle.check(ctx, norm, client_ip)
    except TooManyAttempts:
        LOGINS.labels("throttled").inc()
        raise
    async with ctx.pool.acquire() as conn:
        account = await conn.fetchrow(repo.ACCOUNT_BY_EMAIL, norm)
    ok = await passwords.verify_password(account["password_hash"] if account else None, password)
    if not ok or account is None:
        await throttle.failed(ctx, norm, client_ip)
        LOGINS.labels("wrong_password").inc()
        raise Unauthorized("wrong e-mail or password", code="invalid_credentials")
    if account["status"] != "active":
        LOGINS.labels("disabled").inc()
        raise Forbidden("this account is disabled", code="account_disabled")
    await throttle.succeeded(ctx, norm)
    LOGINS.labels("ok").inc()
    log.info("logged in", extra={"account_id": account["id"], "client_ip": client_ip})
    return account, await new_session(ctx, account["id"], client_ip)


async def resolve_session(ctx: Ctx, token: str) -> Principal:
    """The person behind a session cookie value; NotLoggedIn when it is unknown, idle too long or too old."""
    if not token or len(token) > 256:
        raise NotLoggedIn()
    h = token_hash(token)
    s = ctx.settings
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow(repo.LIVE_SESSION, h, float(s.session_idle_s), float(s.session_max_s))
        if row is None or row["status"] != "active":
            raise NotLoggedIn()
        if row["last_seen_at"] < datetime.now(UTC) - timedelta(seconds=60):
            await conn.execute(repo.TOUCH_SESSION, h)
    return Principal(account_id=row["id"], email=row["email"], role=row["role"], session_hash=h)


async def logout(ctx: Ctx, token: str) -> None:
    async with ctx.pool.acquire() as conn:
        await conn.execute(repo.DELETE_SESSION, token_hash(token))


async def change_password(ctx: Ctx, who: Principal, current: str, new: str) -> None:
    """Ends every other session of the account (this one stays)."""
    check_password_policy(ctx, new, "new_password")
    async with ctx.pool.acquire() as conn:
        account = await conn.fetchrow(repo.ACCOUNT_BY_ID, who.account_id)
    if not await passwords.verify_password(account["password_hash"], current):
        raise InvalidInput({"current_password": "wrong password"})
    pw_hash = await passwords.hash_password(new)
    async with ctx.pool.acquire() as conn, conn.transaction():
        await conn.execute(repo.SET_PASSWORD, who.account_id, pw_hash)
        await conn.execute(repo.DELETE_OTHER_SESSIONS, who.account_id, who.session_hash)
    log.info("password changed", extra={"account_id": who.account_id})


# --- password reset -----------------------------------------------------------------------------------------


async def request_reset(ctx: Ctx, email: str) -> None:
    """Publish a reset link if the address has an active account. The caller answers the same either way."""
    norm = email.strip().lower()
    if not await throttle.reset_allowed(ctx, norm):
        RESETS.labels("throttled").inc()
        return  # nobody's mailbox gets flooded; the caller's answer does not change
    async with ctx.pool.acquire() as conn:
        account = await conn.fetchrow(repo.ACCOUNT_BY_EMAIL, norm)
        if account is None or account["status"] != "active":
            RESETS.labels("no_account").inc()
            return
        token = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(seconds=ctx.settings.reset_token_ttl_s)
        await conn.execute(repo.INSERT_RESET, token_hash(token), account["id"], expires)
    RESETS.labels("sent").inc()
    url = f"{ctx.settings.public_url.rstrip('/')}/reset-password?token={token}"
    await ctx.publisher.publish(ev.PasswordResetRequested(account_id=account["id"], email=account["email"],
                                                          reset_url=url, expires_at=expires))


async def confirm_reset(ctx: Ctx, token: str, password: str) -> None:
    """Set the new password and end every session of the account; the token works once, before it expires."""
    check_password_policy(ctx, password)
    pw_hash = await passwords.hash_password(password)
    async with ctx.pool.acquire() as conn, conn.transaction():
        account_id = await conn.fetchval(repo.CONSUME_RESET, token_hash(token))
        if account_id is None:
            raise InvalidInput({"token": "this reset link is invalid, used or expired"})
        await conn.execute(repo.SET_PASSWORD, account_id, pw_hash)
        await conn.execute(repo.DELETE_ACCOUNT_SESSIONS, account_id)
    log.info("password reset", extra={"account_id": account_id})


# --- administration -----------------------------------------------------------------------------------------


async def get_account(ctx: Ctx, account_id: str) -> AccountOut:
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow(repo.ACCOUNT_BY_ID, account_id)
    if row is None:
        raise NotFound(f"no account {account_id}")
    return account_out(row)


async def search(ctx: Ctx, q: str = "", status: str = "", role: str = "", limit: int = 50,
                 offset: int = 0) -> AccountPage:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(repo.SEARCH_ACCOUNTS, q.strip().lower(), status, role, limit, offset)
    return AccountPage(items=[account_out(r) for r in rows], total=rows[0]["total"] if rows else 0)


async def update_account(ctx: Ctx, who: Principal, account_id: str, patch: AccountPatch) -> AccountOut:
    unset = msgspec.UNSET
    if account_id == who.account_id and (
        (patch.role is not unset and patch.role != "admin") or (patch.status is not unset
                                                                 and patch.status != "active")):
        raise Conflict("an admin cannot demote or disable themself (ask another admin)")
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            row = await conn.fetchrow(repo.ACCOUNT_BY_ID_FOR_UPDATE, account_id)
            if row is None:
                raise NotFound(f"no account {account_id}")
            group = row["group"] if patch.group is unset else patch.group
            if group != row["group"] and await conn.fetchrow(repo.GROUP_BY_NAME, group) is None:
                raise InvalidInput({"group": f"no group {group}"})
            status = row["status"] if patch.status is unset else patch.status
            role = row["role"] if patch.role is unset else patch.role
            new = await conn.fetchrow(repo.UPDATE_ACCOUNT, account_id, status, group, role)
            if status != "active":
                await conn.execute(repo.DELETE_ACCOUNT_SESSIONS, account_id)
            if group != row["group"]:
                await conn.execute(repo.MOVE_ACCOUNT_KEYS, account_id, row["group"], group)
    # Key snapshots first: a gateway that drops its cached keys on account.changed re-reads the new ones.
    if status != row["status"] or group != row["group"]:
        await apikeys.publish_keys_of_account(ctx, account_id)
    if (status, group, role) != (row["status"], row["group"], row["role"]):
        await ctx.publisher.publish(ev.AccountChanged(account_id=account_id, status=status, group=group,
                                                      role=role))
        log.info("account changed", extra={"account_id": account_id, "actor": who.account_id,
                                           "status": status, "group": group, "role": role})
    return account_out(new)


async def ensure_admin(ctx: Ctx, email: str, password: str) -> tuple[str, bool]:
    """Make `email` an admin: create the account if absent (returns its id and whether it was created); an
    existing account is promoted, its password left as it is."""
    norm = normalize_email(email)
    async with ctx.pool.acquire() as conn:
        row = await conn.fetchrow(repo.ACCOUNT_BY_EMAIL, norm)
    if row is None:
        try:
            account, _, _ = await register(ctx, email, password, role="admin", default_key=False)
            return account["id"], True
        except Conflict:  # another worker starting at the same moment created it
            async with ctx.pool.acquire() as conn:
                row = await conn.fetchrow(repo.ACCOUNT_BY_EMAIL, norm)
    if row["role"] != "admin" or row["status"] != "active":
        async with ctx.pool.acquire() as conn:
            await conn.execute(repo.UPDATE_ACCOUNT, row["id"], "active", row["group"], "admin")
        await ctx.publisher.publish(ev.AccountChanged(account_id=row["id"], status="active",
                                                      group=row["group"], role="admin"))
    return row["id"], False
