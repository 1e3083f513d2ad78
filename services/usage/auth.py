"""Which accounts a caller of the usage API may see. Who is calling (a console session checked with keys, or a
service with the internal token): shared/console_auth.py. The API only reads, so it holds no CSRF secret: a
write with the session cookie would be refused.

A user sees only their own account; an admin sees every account, or one they name with `account_id`.
An organisation's owners, admins and viewers see the organisation's (`account_id=<org id>`; keys' membership
answer decides), and only its owners and admins export it as CSV.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from shared.console_auth import Caller, ConsoleAuth, KeysClient
from shared.web import Forbidden

Principal = Caller

ORG_READERS = frozenset({"owner", "admin", "viewer"})
ORG_EXPORTERS = frozenset({"owner", "admin"})


class Authenticator(ConsoleAuth):
    def __init__(self, *, keys_url: str, internal_token: str, session_cookie: str,
                 http: httpx.AsyncClient) -> None:
        super().__init__(KeysClient(http, keys_url, internal_token), internal_token=internal_token,
                         secret_key=None, session_cookie=session_cookie)

    async def principal(self, headers: Mapping[str, str], cookies: Mapping[str, str],
                        method: str = "GET") -> Principal:
        return await self.caller(headers, cookies, method)

    async def as_org_member(self, who: Principal, requested: str | None, *,
                            export: bool = False) -> Principal:
        """`who` reading an organisation's usage, if their role allows it; anything else is left to `scope`."""
        return await self.org_member(who, requested, ORG_EXPORTERS if export else ORG_READERS)


def scope(who: Principal, requested: str | None) -> str | None:
    """The account to read: a user's own (naming another is refused); an admin's pick, None = every one."""
    if who.is_admin:
        return requested or None
    if requested and requested != who.account_id:
        raise Forbidden("you can only see your own usage")
    return who.account_id
