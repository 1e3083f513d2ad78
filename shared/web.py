"""What every HTTP service shares: ops endpoints, the error base, request ids, and the ASGI server runner."""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.logging.config import LoggingConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from shared.events import new_id
from shared.logs import request_id_var

ReadyCheck = Callable[[], Awaitable[None]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


class ServiceError(Exception):
    """Root of every service's errors: an HTTP status, a stable machine code and a human message."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, status: int | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.field = field


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


def service_error_handler(request: Request[Any, Any, Any], exc: ServiceError) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"error": {"code": exc.code, "message": exc.message}}
    if exc.field:
        body["error"]["field"] = exc.field
    return Response(body, status_code=exc.status)


def well_formed_request_id(value: str | None) -> str:
    """Keep a client's X-Request-Id when it is well-formed; otherwise mint one."""
    if value and _REQUEST_ID.match(value):
        return value
    return new_id()


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Set the request id for logs and echo it as X-Request-Id on every response, errors included."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]  # (Litestar types it as an enum)
            await app(scope, receive, send)
            return
        incoming = next((v.decode() for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = well_formed_request_id(incoming)
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)

    return middleware


def logging_config() -> LoggingConfig:
    """Litestar's logging, routed into ours: by default Litestar replaces the root handler with its own text
    format; this keeps `shared.logs` JSON lines and still logs uncaught exceptions (through the root logger)."""
    return LoggingConfig(
        configure_root_logger=False,
        loggers={"litestar": {"level": "INFO", "handlers": [], "propagate": True}},
        log_exceptions="always",
    )


def metrics_payload() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def ops_handlers(checks: Mapping[str, ReadyCheck], *, degrade_only: Collection[str] = ()) -> list[HTTPRouteHandler]:
    """/healthz (the process is alive), /readyz (each dependency answers), /metrics (Prometheus).

    A dependency named in `degrade_only` is one the service keeps working without (the gateway spools events
    while NATS is away and runs on its caches while Redis is): its failure shows in the body as "degraded" but
    leaves the answer 200, so an orchestrator does not take every replica out of service at once."""

    @get("/healthz", include_in_schema=False, sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", include_in_schema=False)
    async def readyz() -> Response[dict[str, Any]]:
        results: dict[str, str] = {}
        status = "ok"
        for name, check in checks.items():
            try:
                await check()
                results[name] = "ok"
            except Exception as exc:
                results[name] = f"error: {type(exc).__name__}"
                if name not in degrade_only:
                    status = "unavailable"
                elif status == "ok":
                    status = "degraded"
        return Response({"status": status, "checks": results}, status_code=503 if status == "unavailable" else 200)

    @get("/metrics", include_in_schema=False, sync_to_thread=False)
    def metrics() -> Response[bytes]:
        return Response(metrics_payload(), media_type=CONTENT_TYPE_LATEST)

    return [healthz, readyz, metrics]


def serve(
    target: str,
    *,
    host: str,
    port: int,
    workers: int,
    data_dir: str,
    service: str,
    shutdown_grace_s: int = 30,
    interface: str = "asgi",
) -> None:
    """Run `target` ("module:factory") on granian, a Rust ASGI server (1.3-1.45x uvicorn here); `interface`
    "rsgi" for an app that also speaks granian's own (the gateway: services/gateway/front.py, shared/rsgi.py)."""
    from granian.constants import Interfaces
    from granian.server import Server

    if workers > 1:
        # Each worker is its own process: metrics go through prometheus-client's multiprocess files.
        prom = Path(data_dir) / "prometheus" / f"{service}-{port}"
        shutil.rmtree(prom, ignore_errors=True)
        prom.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom.resolve())
        # prometheus-client picks its value store when first imported, and this process has imported it already:
        # forked workers would inherit the single-process store and /metrics would miss their samples. Spawned
        # workers import it afresh and see the variable.
        multiprocessing.set_start_method("spawn", force=True)
    Server(
        target,
        address=host,
        port=port,
        interface=Interfaces.RSGI if interface == "rsgi" else Interfaces.ASGI,
        workers=workers,
        factory=True,
        log_access=False,
        backlog=2048,
        workers_kill_timeout=shutdown_grace_s,
    ).serve()
