"""Who is calling billing's API.

  - A console session: the session cookie's value (cookie `fg_session`, or an `X-Session` header) goes to
  keys'
    `GET /internal/whoami` with the internal token, which answers {account_id, user_id, role, email} or 401.
  - A service call (another Faregate service, an admin tool, or the console backend acting for a user):
    `X-Internal-Token` plus `X-Account-Id` and `X-Role` (`user` unless said otherwise; an `admin` may omit the
    account).
Writes made with the session cookie must echo the CSRF token in `X-CSRF-Token` (the keys service's `csrf`
cookie: an HMAC of the session under the shared secret key, so billing checks it without asking keys).
A user acts on their own wallet only; an admin may name any account (`?account_id=`) and use
/v1/admin/billing. An organisation's wallet (`?account_id=<org id>`): its owners and admins read and fund it,
its viewers read it (balance, ledger), its members neither; keys' membership answer decides.
"""

from __future__ import annotations

import hashlib
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
ORG_WRITERS = frozenset({"owner", "admin"})


@dataclass(frozen=True)
class Caller:
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


def internal_ok(headers: Mapping[str, str], token: str) -> bool:
    given = headers.get("x-internal-token")
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(secret_key: str, session: str) -> str:
    """The token keys puts in the `csrf` cookie for this session (services/keys/accounts.py csrf_token)."""
    session_hash = hashlib.sha256(session.encode()).hexdigest()
    return hmac.new(secret_key.encode(), b"csrf:" + session_hash.encode(), hashlib.sha256).hexdigest()


class Authenticator:
    def __init__(self, *, keys_url: str, internal_token: str, session_cookie: str, secret_key: str,
                 http: httpx.AsyncClient) -> None:
        self.keys_url = keys_url.rstrip("/")
        self.internal_token = internal_token
        self.session_cookie = session_cookie
        self.secret_key = secret_key
        self.http = http

    async def caller(self, headers: Mapping[str, str], cookies: Mapping[str, str],
                     method: str = "GET") -> Caller:
        if headers.get("x-internal-token") is not None:
            if not internal_ok(headers, self.internal_token):
                raise Unauthorized("invalid internal token")
            role = headers.get("x-role") or "user"
            account = headers.get("x-account-id") or ""
            if not account and role != ADMIN:
                raise Unauthorized("X-Account-Id is required with the internal token")
            return Caller(account, headers.get("x-user-id") or "", role)
        session = cookies.get(self.session_cookie)
        if session and method.upper() not in SAFE_METHODS:
            # A browser sends the cookie on cross-site requests too; only our own page can read the csrf
            # cookie.
            sent = headers.get("x-csrf-token", "")
            if not hmac.compare_digest(sent.encode(), csrf_token(self.secret_key, session).encode()):
                raise Forbidden("missing or wrong X-CSRF-Token header (copy it from the csrf cookie)",
                                code="csrf_failed")
        session = session or headers.get("x-session")  # a non-browser client may send the value as a header
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

    async def as_org_member(self, who: Caller, requested: str | None, method: str) -> Caller:
        """`who` acting on an organisation's wallet: the org as the caller's account, if their role allows
        it. Anything else (their own wallet, an admin, no account named) is left to `wallet_of`."""
        if who.is_admin or not requested or requested == who.account_id \
                or not requested.startswith(ORG_PREFIX):
            return who
        role = await self.org_role(requested, who.account_id)
        if role is None:
            return who  # wallet_of() refuses it like any other account
        allowed = ORG_READERS if method.upper() in SAFE_METHODS else ORG_WRITERS
        if role not in allowed:
            raise Forbidden(f"your role in this organisation ({role}) does not allow this", code="org_role")
        return Caller(requested, who.account_id, "user", who.email)

    async def _whoami(self, session: str) -> Caller:
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
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise _unavailable("the sign-in service answered badly") from None
        return Caller(who.account_id, who.user_id, who.role, who.email)


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
