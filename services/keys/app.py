"""The keys service: accounts, sessions, API keys and the catalog, and the gateways' view of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from nats.aio.msg import Msg

from services.keys import (
    accounts,
    admin_api,
    auth_api,
    catalog_admin,
    channel_ops,
    console,
    consumer,
    errors,
    internal_api,
    keys_api,
    org_wallet_audit,
    orgs_api,
    scan,
    snapshots,
)
from services.keys.config import KeysSettings
from services.keys.context import Ctx
from services.keys.web import provide_ctx
from shared import bus, config, logs, telemetry, web
from shared.config import CommonSettings
from shared.events import AnyEvent
from shared.runtime import Resources, open_resources
from shared.web import ops_handlers, request_id_middleware

log = logging.getLogger("faregate.keys")


async def start_up(ctx: Ctx) -> None:
    """First admin from the configuration; the catalog file if the catalog is empty; the catalog in Redis."""
    s = ctx.settings
    if s.admin_email and s.admin_password:
        account_id, created = await accounts.ensure_admin(ctx, s.admin_email, s.admin_password)
        if created:
            log.info("first admin created", extra={"account_id": account_id})
    current = await catalog_admin.current(ctx)
    if s.catalog_file and not current.models:
        raw = await asyncio.to_thread(Path(s.catalog_file).read_bytes)
        imported = await catalog_admin.import_file(ctx, catalog_admin.parse_file(raw))
        log.info("catalog imported", extra={"file": s.catalog_file, "version": imported.version})
        current = imported
    # The database is the truth: whatever Redis holds (an older or a lost snapshot) is replaced.
    await snapshots.put_catalog(ctx, current, force=True)


def create_app(settings: KeysSettings, common: CommonSettings) -> Litestar:
    holder: dict[str, Resources] = {}
    # The web console: its pages, and (console_proxy) the other services' browser APIs on this one origin.
    proxy = console.Proxy() if settings.console_proxy else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_resources(common, "keys") as res:
            assert res.js is not None
            ctx = Ctx.from_resources(settings, res)
            holder["res"] = res
            app.state.ctx = ctx
            app.state.resources = res
            await start_up(ctx)

            async def last_used(batch: Sequence[tuple[Msg, AnyEvent]]) -> None:
                await consumer.handle_last_used(ctx, batch)

            res.spawn(bus.run_consumer(res.js, common.namespace, consumer.LAST_USED, last_used, res.stop),
                      consumer.LAST_USED.durable)

            async def org_wallet(batch: Sequence[tuple[Msg, AnyEvent]]) -> None:
                await org_wallet_audit.handle(ctx, batch)

            res.spawn(bus.run_consumer(res.js, common.namespace, org_wallet_audit.ORG_WALLET, org_wallet,
                                       res.stop), org_wallet_audit.ORG_WALLET.durable)
            res.spawn(scan.run_forever(ctx, res.stop), "keys-scan")
            yield
            # The web console's proxy (services/keys/console.py) holds an HTTP client.
            if proxy is not None:
                await proxy.aclose()

    # The resources exist only once the lifespan runs, so the ready checks look them up when called.
    async def check(name: str) -> None:
        await holder["res"].ready_checks()[name]()

    async def postgres() -> None:
        await check("postgres")

    async def redis() -> None:
        await check("redis")

    async def nats() -> None:
        await check("nats")

    return Litestar(
        logging_config=web.logging_config(),
        route_handlers=[
            *ops_handlers({"postgres": postgres, "redis": redis, "nats": nats}),
            auth_api.router,
            keys_api.router,
            orgs_api.router,
            orgs_api.internal_router,
            admin_api.router,
            channel_ops.router,
            internal_api.router,
            internal_api.public_models,
            *console.route_handlers(settings, common, proxy),
        ],
        dependencies={"ctx": Provide(provide_ctx)},
        lifespan=[lifespan],
        middleware=[request_id_middleware],
        exception_handlers=errors.HANDLERS,
        openapi_config=OpenAPIConfig(title="Faregate keys", version="1.0.0",
                                     description="Accounts, sessions, API keys and the catalog."),
        debug=False,
    )


def from_env() -> Litestar:
    settings = config.load(KeysSettings)
    common = config.load(CommonSettings)
    logs.setup("keys", common.log_level, common.log_format)
    telemetry.setup("keys", common.otel_exporter, common.otel_endpoint)
    return create_app(settings, common)
