"""Who may act on which wallet in billing's API. Who is calling (a console session checked with keys, or a
service with the internal token; writes with the session cookie echo the CSRF token): shared/console_auth.py.

A user acts on their own wallet only; an admin may name any account (`?account_id=`) and use
/v1/admin/billing. An organisation's wallet (`?account_id=<org id>`): its owners and admins read and fund it,
its viewers read it (balance, ledger), its members neither; keys' membership answer decides.
"""

from __future__ import annotations

import httpx

from shared.console_auth import SAFE_METHODS, Caller, ConsoleAuth, KeysClient, internal_ok
from shared.web import Forbidden, ServiceError

__all__ = ["Authenticator", "Caller", "internal_ok", "require_admin", "wallet_of"]

ORG_READERS = frozenset({"owner", "admin", "viewer"})
ORG_WRITERS = frozenset({"owner", "admin"})


class Authenticator(ConsoleAuth):
    def __init__(self, *, keys_url: str, internal_token: str, session_cookie: str, secret_key: str,
                 http: httpx.AsyncClient) -> None:
        super().__init__(KeysClient(http, keys_url, internal_token), internal_token=internal_token,
                         secret_key=secret_key, session_cookie=session_cookie)

    async def as_org_member(self, who: Caller, requested: str | None, method: str) -> Caller:
        """`who` acting on an organisation's wallet, if their role allows this method; anything else is left to
        `wallet_of`."""
        allowed = ORG_READERS if method.upper() in SAFE_METHODS else ORG_WRITERS
        return await self.org_member(who, requested, allowed)


def wallet_of(who: Caller, requested: str | None) -> str:
    """The wallet a request acts on: the caller's own; an admin may name another."""
    if requested and requested != who.account_id:
        if not who.is_admin:
            raise Forbidden("you can only act on your own wallet")
        return requested
    if not who.account_id:
        raise ServiceError("name the wallet with account_id", field="account_id")
    return who.account_id


def require_admin(who: Caller) -> None:
    if not who.is_admin:
        raise Forbidden("admins only")
