"""Failed-login throttling in Redis: a counter per account and per client address, over a fixed window."""

from __future__ import annotations

import hashlib

from services.keys.context import Ctx
from services.keys.errors import TooManyAttempts


def _keys(ctx: Ctx, email_norm: str, client_ip: str) -> tuple[str, str]:
    # The e-mail is hashed so the Redis key names hold no personal data.
    who = hashlib.sha256(email_norm.encode()).hexdigest()[:32]
    return f"{ctx.keys.ns}:login:fail:acct:{who}", f"{ctx.keys.ns}:login:fail:ip:{client_ip or '-'}"


async def check(ctx: Ctx, email_norm: str, client_ip: str) -> None:
    """Refuse before checking the password once either counter is at its limit."""
    s = ctx.settings
    acct, addr = _keys(ctx, email_norm, client_ip)
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.get(acct)
    pipe.ttl(acct)
    pipe.get(addr)
    pipe.ttl(addr)
    a_count, a_ttl, i_count, i_ttl = await pipe.execute()
    if a_count is not None and int(a_count) >= s.login_max_failures_per_account:
        raise TooManyAttempts("too many failed logins for this account; try again later", max(int(a_ttl), 1))
    if i_count is not None and int(i_count) >= s.login_max_failures_per_address:
        raise TooManyAttempts("too many failed logins from this address; try again later", max(int(i_ttl), 1))


async def failed(ctx: Ctx, email_norm: str, client_ip: str) -> None:
    acct, addr = _keys(ctx, email_norm, client_ip)
    pipe = ctx.redis.pipeline(transaction=True)
    for key in (acct, addr):
        pipe.incr(key)
        pipe.expire(key, ctx.settings.login_window_s, nx=True)
    await pipe.execute()


async def succeeded(ctx: Ctx, email_norm: str) -> None:
    acct, _ = _keys(ctx, email_norm, "")
    await ctx.redis.delete(acct)


async def reset_allowed(ctx: Ctx, email_norm: str) -> bool:
    """At most `reset_max_per_hour` reset e-mails per address and hour, whoever asks."""
    who = hashlib.sha256(email_norm.encode()).hexdigest()[:32]
    key = f"{ctx.keys.ns}:reset:req:{who}"
    pipe = ctx.redis.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, 3600, nx=True)
    count, _ = await pipe.execute()
    return int(count) <= ctx.settings.reset_max_per_hour
