"""Who is calling the notifier's API: a console user or another service, checked by shared/console_auth.py.

The notifier has no cross-account views: every caller acts for one account, so a service call must name it
(`X-Account-Id`) even with the admin role.
"""

from __future__ import annotations

from typing import Any

import httpx
from litestar import Request

from shared.config import CommonSettings
from shared.console_auth import SESSION_COOKIE, Caller, ConsoleAuth, KeysClient
from shared.web import ServiceError

__all__ = ["Caller", "caller_of"]


async def caller_of(request: Request[Any, Any, Any], http: httpx.AsyncClient,
                    common: CommonSettings) -> Caller:
    auth = ConsoleAuth(KeysClient(http, common.keys_url, common.internal_token),
                       internal_token=common.internal_token, secret_key=common.secret_key,
                       session_cookie=SESSION_COOKIE)
    caller = await auth.caller(request.headers, request.cookies, request.method)
    if not caller.account_id:
        raise ServiceError("X-Account-Id is required with X-Internal-Token", code="missing_account")
    return caller
