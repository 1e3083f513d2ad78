"""Who is calling the usage API, and which accounts they may see.

Two ways in:
  - a console session: the session cookie's value (cookie `fg_session`, or an `X-Session` header from a
    non-browser client) goes to keys' `GET /internal/whoami` (with the internal token), which answers
    {account_id, user_id, role, email} or 401;
  - a service call (another Faregate service, or the console backend acting for a user): `X-Internal-Token`
    plus `X-Account-Id` and `X-Role` (`user` unless said otherwise; an `admin` may omit the account).
The API only reads (GET), so a session cookie needs no CSRF token here.
A user sees only their own account; an admin sees every account, or one they name with `account_id`.
An organisation's owners, admins and viewers see the organisation's (`account_id=<org id>`; keys' membership
answer decides), and only its owners and admins export it as CSV.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import msgspec

from shared.web import Forbidden, ServiceError, Unauthorized

ADMIN = "admin"
# Organisation ids (services/keys/orgs.py new_org_id): only these are worth asking keys about.
ORG_PREFIX = "org_"
ORG_READERS = frozenset({"owner", "admin", "viewer"})
ORG_EXPORTERS = frozenset({"owner", "admin"})


@dataclass(frozen=True)
class Principal:
    account_id: str
    user_id: str
    role: str
    email: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


class _WhoAmI(msgspec.Struct, kw_only=True):
    account_id: str
    user_id: str = ""
    role: str = "user"
    email: str = ""


_whoami = msgspec.json.Decoder(_WhoAmI)


class _Membership(msgspec.Struct, kw_only=True):
    role: str


def _unavailable(message: str) -> ServiceError:
    return ServiceError(message, code="auth_unavailable", status=503)


class Authenticator:
    def __init__(self, *, keys_url: str, internal_token: str, session_cookie: str,
                 http: httpx.AsyncClient) -> None:
        self.keys_url = keys_url.rstrip("/")
        self.internal_token = internal_token
        self.session_cookie = session_cookie
        self.http = http

    async def principal(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> Principal:
        token = headers.get("x-internal-token")
        if token is not None:
            if not hmac.compare_digest(token.encode(), self.internal_token.encode()):
                raise Unauthorized("invalid internal token")
            role = headers.get("x-role") or "user"
            account = headers.get("x-account-id") or ""
            if not account and role != ADMIN:
                raise Unauthorized("X-Account-Id is required with the internal token")
            return Principal(account, headers.get("x-user-id") or "", role)
        session = cookies.get(self.session_cookie) or headers.get("x-session")
        if not session:
            raise Unauthorized("sign in first")
        return await self._whoami(session)

    async def org_role(self, org_id: str, user_id: str) -> str | None:
        """The person's role in an organisation (keys' internal membership answer); None if not a member."""
        try:
            # The org id comes from the query string: quoted, so it names one path segment and nothing else.
            url = f"{self.keys_url}/internal/orgs/{quote(org_id, safe='')}/members/{quote(user_id, safe='')}"
            resp = await self.http.get(url, timeout=5.0, headers={"X-Internal-Token": self.internal_token})
        except httpx.HTTPError:
            raise _unavailable("the organisation service is unavailable") from None
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise _unavailable("the organisation service is unavailable")
        try:
            return str(msgspec.json.decode(resp.content, type=_Membership).role)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise _unavailable("the organisation service answered badly") from None

    async def as_org_member(self, who: Principal, requested: str | None, *,
                            export: bool = False) -> Principal:
        """`who` reading an organisation's usage: the org as the account in scope, if their role allows it.
        Anything else (their own account, an admin, no account named) is left as it is for `scope`."""
        if who.is_admin or not requested or requested == who.account_id \
                or not requested.startswith(ORG_PREFIX):
            return who
        role = await self.org_role(requested, who.account_id)
        if role is None:
            return who  # scope() refuses it like any other account
        if role not in (ORG_EXPORTERS if export else ORG_READERS):
            raise Forbidden(f"your role in this organisation ({role}) does not allow this", code="org_role")
        return Principal(requested, who.account_id, "user", who.email)

    async def _whoami(self, session: str) -> Principal:
        try:
            resp = await self.http.get(f"{self.keys_url}/internal/whoami", timeout=5.0, headers={
                "X-Internal-Token": self.internal_token, "X-Session": session})
        except httpx.HTTPError:
            raise _unavailable("the sign-in service is unavailable") from None
        if resp.status_code in (401, 403, 404):
            raise Unauthorized("session expired or invalid; sign in again")
        if resp.status_code != 200:
            raise _unavailable("the sign-in service is unavailable")
        try:
            who = _whoami.decode(resp.content)
        except msgspec.DecodeError:
            raise _unavailable("the sign-in service answered badly") from None
        return Principal(who.account_id, who.user_id, who.role, who.email)


def scope(who: Principal, requested: str | None) -> str | None:
    """The account to read: a user's own (naming another is refused); an admin's pick, None = every one."""
    if who.is_admin:
        return requested or None
    if requested and requested != who.account_id:
        raise Forbidden("you can only see your own usage")
    return who.account_id
