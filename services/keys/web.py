"""HTTP plumbing shared by the keys service's handlers: who is calling, cookies, CSRF, the client address."""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request, Response
from litestar.datastructures import Cookie, State
from litestar.di import NamedDependency

from services.keys import accounts
from services.keys.context import Ctx, Principal
from services.keys.errors import NotLoggedIn
from shared.web import Forbidden, Unauthorized

SESSION_COOKIE = "fg_session"
CSRF_COOKIE = "csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Handler parameters filled by name from the dependencies declared on the app and routers.
CtxDep = NamedDependency[Ctx]
WhoDep = NamedDependency[Principal]


def ctx_of(state: State) -> Ctx:
    ctx: NamedDependency[Ctx] = state.ctx
    return ctx


async def provide_ctx(state: State) -> Ctx:
    return ctx_of(state)


async def provide_principal(request: Request[Any, Any, Any], state: State) -> Principal:
    """The logged-in person. Writes made with the session cookie must echo the CSRF token in X-CSRF-Token (a
    page on another site can make the browser send the cookie, but cannot read the token). Scripts may send
    `Authorization: Bearer <session value>` instead of the cookie."""
    ctx = ctx_of(state)
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        # Scripts may send the session value as a bearer token instead: a browser never adds that header by
        # itself, so no CSRF check is needed for it.
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and bearer.strip():
            return await accounts.resolve_session(ctx, bearer.strip())
        raise NotLoggedIn()
    who = await accounts.resolve_session(ctx, token)
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        expected = accounts.csrf_token(ctx, who.session_hash)
        if not sent or not hmac.compare_digest(sent, expected):
            raise Forbidden("missing or wrong X-CSRF-Token header (copy it from the csrf cookie)",
                            code="csrf_failed")
    return who


async def provide_admin(who: NamedDependency[Principal]) -> Principal:
    if not who.is_admin:
        raise Forbidden("admins only")
    return who


async def require_internal(request: Request[Any, Any, Any], state: State) -> Ctx:
    """Service-to-service calls carry the shared internal token."""
    ctx = ctx_of(state)
    sent = request.headers.get("x-internal-token", "")
    if not sent or not hmac.compare_digest(sent.encode(), ctx.common.internal_token.encode()):
        raise Unauthorized("internal endpoint: missing or wrong X-Internal-Token", code="internal_only")
    return ctx


def client_ip(request: Request[Any, Any, Any], ctx: NamedDependency[Ctx]) -> str:
    if ctx.settings.trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for", "")
        if forwarded:
            return forwarded.split(",")[0].strip()[:64]
    return request.client.host if request.client else ""


def _secure(request: Request[Any, Any, Any], ctx: NamedDependency[Ctx]) -> bool:
    mode = ctx.settings.cookie_secure
    if mode != "auto":
        return mode == "always"
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"


def session_cookies(request: Request[Any, Any, Any], ctx: NamedDependency[Ctx], token: str) -> list[Cookie]:
    secure = _secure(request, ctx)
    csrf = accounts.csrf_token(ctx, accounts.token_hash(token))
    max_age = ctx.settings.session_max_s
    return [
        Cookie(key=SESSION_COOKIE, value=token, httponly=True, samesite="lax", secure=secure, path="/",
               max_age=max_age),
        # Readable by the console's scripts (that is the point); useless without the HttpOnly session cookie.
        Cookie(key=CSRF_COOKIE, value=csrf, httponly=False, samesite="lax", secure=secure, path="/",
               max_age=max_age),
    ]


def clear_cookies(response: Response[Any]) -> Response[Any]:
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response
