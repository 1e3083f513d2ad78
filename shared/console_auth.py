"""Who is calling a service's HTTP API: a console user with a keys session, or another Faregate service.

This is the one implementation of the contract the keys service defines (services/keys/web.py,
services/keys/internal_api.py); billing, usage and the notifier use it, and keys takes its CSRF formula from here.

  - A console session: the session's value (keys' cookie `fg_session`, or an `X-Session` header from a
    non-browser client) goes to keys' `GET /internal/whoami` with the internal token, which answers
    {account_id, user_id, role, email} or 401.
  - A service call (another service, an admin tool, the console backend acting for a user): `X-Internal-Token`
    plus `X-Account-Id`, `X-Role` (`user` unless said otherwise; an `admin` may omit the account) and
    optionally `X-User-Id`.
Writes made with the session cookie must echo the CSRF token in `X-CSRF-Token`: keys puts
`hmac_sha256(secret_key, "csrf:" + sha256(session))` in its `csrf` cookie, so a service checks it with the shared
secret key and without asking keys. A page on another site can make the browser send the cookie but cannot read
the token; a header such as `X-Session` cannot be sent cross-site at all, so it needs no token.
What a caller may then do (their own account, an organisation they belong to, admin routes) is each service's
own rule; `org_member` answers the organisation part with keys' membership answer.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import httpx
import msgspec

from shared.web import Forbidden, ServiceError, Unauthorized

SESSION_COOKIE = "fg_session"  # keys' default cookie name (services/keys/web.py)
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ADMIN = "admin"
# Organisation ids (services/keys/orgs.py new_org_id): only these are worth asking keys about.
ORG_PREFIX = "org_"


@dataclass(frozen=True)
class Caller:
    account_id: str
    user_id: str
    role: str
    email: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


class Unavailable(ServiceError):
    """Keys could not answer: the caller should retry, not sign in again."""

    status = 503
    code = "auth_unavailable"


# --- the CSRF token ------------------------------------------------------------------------------------------


def session_hash(session: str) -> str:
    """What keys stores for a session (only the hash, never the value)."""
    return hashlib.sha256(session.encode()).hexdigest()


def csrf_token(secret_key: str, hashed_session: str) -> str:
    """The token keys puts in the `csrf` cookie for the session with this hash. Changing it signs everyone out of
    writes, so it stays as it is."""
    return hmac.new(secret_key.encode(), b"csrf:" + hashed_session.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret_key: str, session: str, sent: str) -> bool:
    return bool(sent) and hmac.compare_digest(sent.encode(), csrf_token(secret_key, session_hash(session)).encode())


# --- the internal token --------------------------------------------------------------------------------------


def internal_ok(headers: Mapping[str, str], token: str) -> bool:
    given = headers.get("x-internal-token")
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def service_caller(headers: Mapping[str, str], internal_token: str) -> Caller:
    """A call carrying `X-Internal-Token`: who it acts for, from its headers."""
    if not internal_ok(headers, internal_token):
        raise Unauthorized("invalid internal token")
    role = headers.get("x-role") or "user"
    account = (headers.get("x-account-id") or "").strip()
    if not account and role != ADMIN:
        raise ServiceError("X-Account-Id is required with X-Internal-Token", code="missing_account")
    return Caller(account, headers.get("x-user-id") or "", role)


# --- asking keys ---------------------------------------------------------------------------------------------


class Keys(Protocol):
    """What the check needs from the keys service (KeysClient over HTTP; anything answering alike in tests)."""

    async def whoami(self, session: str) -> Caller: ...

    async def org_role(self, org_id: str, user_id: str) -> str | None: ...


class _WhoAmI(msgspec.Struct, kw_only=True):
    account_id: str
    user_id: str = ""
    role: str = "user"
    email: str = ""


class _Membership(msgspec.Struct, kw_only=True):
    role: str


_whoami = msgspec.json.Decoder(_WhoAmI)
_membership = msgspec.json.Decoder(_Membership)


class KeysClient:
    def __init__(self, http: httpx.AsyncClient, keys_url: str, internal_token: str) -> None:
        self.http = http
        self.keys_url = keys_url.rstrip("/")
        self.internal_token = internal_token

    async def whoami(self, session: str) -> Caller:
        """The console user behind a session; Unauthorized if keys does not know it (any more)."""
        try:
            resp = await self.http.get(f"{self.keys_url}/internal/whoami", timeout=5.0, headers={
                "X-Internal-Token": self.internal_token, "X-Session": session})
        except httpx.HTTPError:
            raise Unavailable("the sign-in service is unavailable; try again") from None
        if resp.status_code in (401, 403, 404):
            raise Unauthorized("not logged in or login expired")
        if resp.status_code != 200:
            raise Unavailable("the sign-in service is unavailable; try again")
        try:
            who = _whoami.decode(resp.content)
        except msgspec.DecodeError:  # ValidationError included
            raise Unavailable("the sign-in service answered badly") from None
        return Caller(who.account_id, who.user_id, who.role, who.email)

    async def org_role(self, org_id: str, user_id: str) -> str | None:
        """The person's role in an organisation; None if not a member."""
        try:
            # The org id comes from the query string: quoted, so it names one path segment and nothing else.
            url = f"{self.keys_url}/internal/orgs/{quote(org_id, safe='')}/members/{quote(user_id, safe='')}"
            resp = await self.http.get(url, timeout=5.0, headers={"X-Internal-Token": self.internal_token})
        except httpx.HTTPError:
            raise Unavailable("the organisation service is unavailable") from None
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise Unavailable("the organisation service is unavailable")
        try:
            return _membership.decode(resp.content).role
        except msgspec.DecodeError:
            raise Unavailable("the organisation service answered badly") from None


# --- the check -----------------------------------------------------------------------------------------------


class ConsoleAuth:
    """`caller()` for a request. Without a `secret_key` the service takes no writes from a browser: a write with
    the session cookie is refused rather than let through unchecked."""

    def __init__(self, keys: Keys, *, internal_token: str, secret_key: str | None,
                 session_cookie: str = SESSION_COOKIE) -> None:
        self.keys = keys
        self.internal_token = internal_token
        self.secret_key = secret_key
        self.session_cookie = session_cookie

    def session_of(self, headers: Mapping[str, str], cookies: Mapping[str, str], method: str) -> str:
        """The session value a request carries, once a cookie-borne write has shown the CSRF token."""
        session = cookies.get(self.session_cookie)
        if session and method.upper() not in SAFE_METHODS:
            sent = headers.get(CSRF_HEADER, "")
            if self.secret_key is None or not csrf_ok(self.secret_key, session, sent):
                raise Forbidden("missing or wrong X-CSRF-Token header (copy it from the csrf cookie)",
                                code="csrf_failed")
        session = session or headers.get("x-session")
        if not session:
            raise Unauthorized("not logged in or login expired")
        return session

    async def caller(self, headers: Mapping[str, str], cookies: Mapping[str, str], method: str) -> Caller:
        if headers.get("x-internal-token") is not None:
            return service_caller(headers, self.internal_token)
        return await self.keys.whoami(self.session_of(headers, cookies, method))

    async def org_member(self, who: Caller, requested: str | None, allowed: frozenset[str]) -> Caller:
        """`who` acting on the organisation `requested` names: the org as the caller's account if their role in
        it is one of `allowed`. Anything else (their own account, an admin, no org named, not a member) comes
        back as it was, for the service's own account rule to accept or refuse."""
        if who.is_admin or not requested or requested == who.account_id or not requested.startswith(ORG_PREFIX):
            return who
        role = await self.keys.org_role(requested, who.account_id)
        if role is None:
            return who
        if role not in allowed:
            raise Forbidden(f"your role in this organisation ({role}) does not allow this", code="org_role")
        return Caller(requested, who.account_id, "user", who.email)
