"""/api/auth/...: register, log in and out, the current session, password change and reset."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, get, post
from litestar.di import Provide
from litestar.params import JSONBody
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from services.keys import accounts
from services.keys.schemas import (
    LoginIn,
    PasswordChangeIn,
    RegisteredOut,
    RegisterIn,
    ResetConfirmIn,
    ResetRequestIn,
    SessionOut,
)
from services.keys.web import (
    SESSION_COOKIE,
    CtxDep,
    WhoDep,
    clear_cookies,
    client_ip,
    provide_principal,
    session_cookies,
)
from shared.web import Forbidden


@post("/register", status_code=201, summary="Create an account (and its default API key, shown once)")
async def register(request: Request[Any, Any, Any], ctx: CtxDep, data: JSONBody[RegisterIn]
                   ) -> Response[RegisteredOut]:
    if not ctx.settings.allow_registration:
        raise Forbidden("registration is closed; ask an admin for an account", code="registration_closed")
    account, key_id, secret = await accounts.register(ctx, data.email, data.password)
    assert key_id is not None and secret is not None
    token = await accounts.new_session(ctx, account["id"], client_ip(request, ctx))
    body = RegisteredOut(account=accounts.account_out(account), api_key=secret, key_id=key_id,
                         csrf_token=accounts.csrf_token(ctx, accounts.token_hash(token)))
    return Response(body, status_code=201, cookies=session_cookies(request, ctx, token))


@post("/login", status_code=200, summary="Log in: sets the session cookie (HttpOnly) and the csrf cookie")
async def login(request: Request[Any, Any, Any], ctx: CtxDep, data: JSONBody[LoginIn]
                ) -> Response[SessionOut]:
    account, token = await accounts.login(ctx, data.email, data.password, client_ip(request, ctx))
    body = SessionOut(account=accounts.account_out(account),
                      csrf_token=accounts.csrf_token(ctx, accounts.token_hash(token)))
    return Response(body, cookies=session_cookies(request, ctx, token))


@post("/logout", status_code=HTTP_204_NO_CONTENT, dependencies={"who": Provide(provide_principal)})
async def logout(request: Request[Any, Any, Any], ctx: CtxDep, who: WhoDep) -> Response[None]:
    await accounts.logout(ctx, request.cookies.get(SESSION_COOKIE, ""))
    return clear_cookies(Response(None, status_code=HTTP_204_NO_CONTENT))


@get("/me", dependencies={"who": Provide(provide_principal)}, summary="The logged-in account")
async def me(ctx: CtxDep, who: WhoDep) -> SessionOut:
    return SessionOut(account=await accounts.get_account(ctx, who.account_id),
                      csrf_token=accounts.csrf_token(ctx, who.session_hash))


@post("/password", status_code=HTTP_204_NO_CONTENT, dependencies={"who": Provide(provide_principal)},
      summary="Change the password; ends every other session")
async def change_password(ctx: CtxDep, who: WhoDep, data: JSONBody[PasswordChangeIn]) -> None:
    await accounts.change_password(ctx, who, data.current_password, data.new_password)


@post("/reset-request", status_code=HTTP_202_ACCEPTED,
      summary="E-mail a password-reset link (same answer whether or not the address has an account)")
async def reset_request(ctx: CtxDep, data: JSONBody[ResetRequestIn]) -> dict[str, str]:
    await accounts.request_reset(ctx, data.email)
    return {"status": "if an account uses this address, a reset link is on its way"}


@post("/reset-confirm", status_code=HTTP_204_NO_CONTENT,
      summary="Set a new password with the link's token; ends every session of the account")
async def reset_confirm(ctx: CtxDep, data: JSONBody[ResetConfirmIn]) -> None:
    await accounts.confirm_reset(ctx, data.token, data.password)


router = Router("/api/auth", route_handlers=[register, login, logout, me, change_password, reset_request,
                                             reset_confirm], tags=["auth"])
