"""Who is calling the notifier's API: a console user (session checked by keys) or another service.

Console users send their session (header `X-Session`, or keys' session cookie when the console and this API
share an origin behind a proxy); keys answers `GET /internal/whoami` with `{account_id, user_id, role,
email}`. Services send `X-Internal-Token` and `X-Account-Id` to act for an account.
"""

from __future__ import annotations

import hmac
from typing import Any

import httpx
import msgspec
from litestar import Request

from shared.config import CommonSettings
from shared.web import Forbidden, ServiceError, Unauthorized

# The names keys gives its cookies (services/keys/web.py); the CSRF cookie is readable by the console's
# scripts.
SESSION_COOKIE = "fg_session"
CSRF_COOKIE = "csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    user_id: str = ""
    role: str = ""
    email: str = ""


class Unavailable(ServiceError):
    status = 503
    code = "keys_unavailable"


async def whoami(http: httpx.AsyncClient, common: CommonSettings, session: str) -> Caller:
    try:
        resp = await http.get(f"{common.keys_url}/internal/whoami", timeout=5.0,
                              headers={"X-Internal-Token": common.internal_token, "X-Session": session})
    except httpx.HTTPError:
        raise Unavailable("cannot check the session right now; try again") from None
    if resp.status_code in (401, 403, 404):
        raise Unauthorized("not logged in or login expired")
    if resp.status_code != 200:
        raise Unavailable("cannot check the session right now; try again")
    try:
        return msgspec.json.decode(resp.content, type=Caller)
    except msgspec.DecodeError:
        raise Unavailable("the keys service gave an unexpected answer") from None


async def caller_of(request: Request[Any, Any, Any], http: httpx.AsyncClient,
                    common: CommonSettings) -> Caller:
    token = request.headers.get("x-internal-token")
    if token is not None:
        if not hmac.compare_digest(token.encode(), common.internal_token.encode()):
            raise Unauthorized("bad internal token")
        account_id = request.headers.get("x-account-id", "").strip()
        if not account_id:
            raise ServiceError("X-Account-Id is required with X-Internal-Token", code="missing_account")
        return Caller(account_id=account_id, role="service")
    session = request.headers.get("x-session")
    if not session:
        session = request.cookies.get(SESSION_COOKIE)
        # A page on another site can make the browser send the cookie but cannot read the csrf cookie to echo
        # it (double submit); a header such as X-Session cannot be sent cross-site at all.
        if session and request.method not in SAFE_METHODS:
            sent, expected = request.headers.get(CSRF_HEADER, ""), request.cookies.get(CSRF_COOKIE, "")
            if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
                raise Forbidden("missing or wrong X-CSRF-Token header (copy it from the csrf cookie)",
                                code="csrf_failed")
    if not session:
        raise Unauthorized("not logged in or login expired")
    return await whoami(http, common, session)
