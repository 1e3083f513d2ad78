"""The web console from the keys service: the built single-page app (`console/dist`) at its page paths,
and, for local runs, a reverse proxy for the other services' browser APIs so the browser sees one origin.

In Kubernetes the Ingress routes `/v1/billing`, `/v1/admin/billing`, `/api/usage`, `/api/notifications` and
`/v1/*` itself; there `FAREGATE_KEYS_CONSOLE_PROXY=false`. Locally (`faregate dev`, the browser tests) the
keys service forwards those paths, streaming the answer through unbuffered (the playground reads SSE through
it).
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path
from typing import Any

import httpx
from litestar import Response, asgi, get
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath
from litestar.types import Receive, Scope, Send

from services.keys.config import KeysSettings
from shared.config import CommonSettings

log = logging.getLogger("faregate.keys.console")

DEFAULT_DIST = Path(__file__).resolve().parents[2] / "console" / "dist"

# The client-side router's pages; each answers index.html so a reload or a deep link (a reset e-mail's link)
# lands on the right page. Listed rather than caught-all so an unknown path stays a plain 404.
PAGES = ["/", "/login", "/signup", "/forgot", "/reset-password", "/onboarding", "/dashboard", "/keys",
         "/wallet", "/logs", "/playground", "/models", "/settings", "/admin", "/orgs", "/orgs/join"]

# The page shell may be replaced by a new build at any time; hashed assets never change under their name.
NO_CACHE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'")

NOT_BUILT = b"""<!doctype html><meta charset="utf-8"><title>Faregate console</title>
<p>The console is not built yet. Run <code>make console</code> and reload.</p>"""

# The console's requests are small JSON bodies (a playground chat with images is the largest); the services
# behind enforce their own limits, this one only keeps a runaway upload out of the keys process's memory.
MAX_BODY = 32 * 1024 * 1024

# Hop-by-hop headers (RFC 9110 7.6.1) and those httpx recomputes; never forwarded either way.
HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                 "transfer-encoding", "upgrade", "host", "content-length"})


def dist_dir(settings: KeysSettings) -> Path:
    return Path(settings.console_dir) if settings.console_dir else DEFAULT_DIST


def static_handlers(settings: KeysSettings) -> list[BaseRouteHandler]:
    root = dist_dir(settings)

    def index() -> Response[bytes]:
        page = root / "index.html"
        if not page.is_file():
            return Response(NOT_BUILT, media_type="text/html", status_code=503,
                            headers={"Cache-Control": NO_CACHE})
        return Response(page.read_bytes(), media_type="text/html",
                        headers={"Cache-Control": NO_CACHE, "Content-Security-Policy": CSP,
                                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})

    @get(PAGES, include_in_schema=False, sync_to_thread=False)
    def page() -> Response[bytes]:
        return index()

    @get("/admin/{section:str}", include_in_schema=False, sync_to_thread=False)
    def admin_page(section: FromPath[str]) -> Response[bytes]:
        return index()

    @get("/orgs/{org_id:str}", include_in_schema=False, sync_to_thread=False)
    def org_page(org_id: FromPath[str]) -> Response[bytes]:
        return index()

    @get("/assets/{name:path}", include_in_schema=False, sync_to_thread=False)
    def asset(name: FromPath[str]) -> Response[bytes]:
        assets = (root / "assets").resolve()
        target = (assets / name.lstrip("/")).resolve()
        if not target.is_relative_to(assets) or not target.is_file():
            return Response(b"not found", media_type="text/plain", status_code=404)
        media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return Response(target.read_bytes(), media_type=media,
                        headers={"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"})

    @get("/favicon.svg", include_in_schema=False, sync_to_thread=False)
    def favicon() -> Response[bytes]:
        icon = root / "favicon.svg"
        if not icon.is_file():
            return Response(b"", status_code=404)
        return Response(icon.read_bytes(), media_type="image/svg+xml", headers={"Cache-Control": NO_CACHE})

    return [page, admin_page, org_page, asset, favicon]


class Proxy:
    """Forwards a request to another service and streams the answer back as it arrives."""

    def __init__(self) -> None:
        # No read timeout: a streamed chat may pause for a long time between events; the upstream bounds it.
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), follow_redirects=False)

    async def forward(self, base_url: str, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += bytes(message.get("body", b""))  # type: ignore[call-overload]
            if len(body) > MAX_BODY:
                await _json(send, 413, b'{"error":{"code":"body_too_large",'
                                       b'"message":"the request body is too large"}}')
                return
            if not message.get("more_body", False):
                break
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        url = base_url.rstrip("/") + raw_path.decode("latin-1")
        if query:
            url += "?" + query.decode("latin-1")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in HOP]
        client = scope.get("client")
        if client:
            headers.append(("x-forwarded-for", client[0]))
        headers.append(("x-forwarded-proto", scope.get("scheme", "http")))
        method: str = scope["method"]  # type: ignore[typeddict-item]  # mounted for HTTP only
        request = self.http.build_request(method, url, headers=headers, content=bytes(body))
        try:
            upstream = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("console proxy: upstream unreachable", extra={"url": url, "error": str(exc)})
            await _json(send, 502, b'{"error":{"code":"upstream_unavailable",'
                                   b'"message":"that service is not reachable right now; try again"}}')
            return
        try:
            out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in upstream.headers.multi_items()
                   if k.lower() not in HOP and k.lower() != "content-encoding"]
            await send({"type": "http.response.start", "status": upstream.status_code, "headers": out})
            # aiter_raw would pass compressed bytes without their content-encoding; decoded bytes keep it
            # simple.
            async for chunk in upstream.aiter_bytes():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await upstream.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()


async def _json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def proxy_handlers(settings: KeysSettings, common: CommonSettings, proxy: Proxy) -> list[BaseRouteHandler]:
    """`/v1/billing`, `/v1/admin/billing` -> billing; other `/v1/*` -> gateway; `/api/usage` -> usage;
    `/api/notifications` -> notifier."""

    @asgi("/v1", is_mount=True, copy_scope=True, include_in_schema=False)
    async def v1(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
        billing = path.startswith(("/v1/billing/", "/v1/admin/billing/"))
        await proxy.forward(common.billing_url if billing else settings.gateway_url, scope, receive, send)

    @asgi("/api/usage", is_mount=True, copy_scope=True, include_in_schema=False)
    async def usage(scope: Scope, receive: Receive, send: Send) -> None:
        await proxy.forward(common.usage_url, scope, receive, send)

    @asgi("/api/notifications", is_mount=True, copy_scope=True, include_in_schema=False)
    async def notifications(scope: Scope, receive: Receive, send: Send) -> None:
        await proxy.forward(settings.notifier_url, scope, receive, send)

    return [v1, usage, notifications]


def route_handlers(settings: KeysSettings, common: CommonSettings, proxy: Proxy | None) -> list[Any]:
    """Everything the console adds to the keys app; the proxy only when one is given (console_proxy on)."""
    handlers: list[Any] = static_handlers(settings)
    if proxy is not None:
        handlers += proxy_handlers(settings, common, proxy)
    return handlers
