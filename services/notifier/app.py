"""The notifier process: event consumers that fill the outbox, senders that empty it, and a small HTTP API for
notification preferences and delivery history under /api/notifications/."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from litestar import Litestar, Request, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody

from services.notifier import consumer, deliveries, housekeeping, preferences
from services.notifier.auth import Caller, caller_of
from services.notifier.config import NotifierSettings
from services.notifier.deliveries import Delivery
from services.notifier.notifications import CHANNELS, Context
from services.notifier.preferences import PrefsUpdate, PrefsView
from services.notifier.sender import Sender
from shared import bus, config, logs, telemetry, web
from shared.config import CommonSettings
from shared.runtime import open_resources
from shared.web import ReadyCheck, ServiceError, ops_handlers, request_id_middleware, service_error_handler


class Secret(msgspec.Struct, frozen=True, kw_only=True):
    webhook_secret: str  # shown once


async def provide_caller(request: Request[Any, Any, State]) -> Caller:
    state = request.app.state
    return await caller_of(request, state.http, state.common)


@get("/api/notifications/preferences")
async def get_preferences(state: State, caller: NamedDependency[Caller]) -> PrefsView:
    return preferences.view(await preferences.load(state.res.pool, caller.account_id))


@put("/api/notifications/preferences")
async def put_preferences(state: State, caller: NamedDependency[Caller],
                          data: JSONBody[PrefsUpdate]) -> PrefsView:
    return await preferences.update(state.res.pool, caller.account_id, data,
                                    secret_key=state.common.secret_key,
                                    allow_private=state.settings.webhook_allow_private)


@post("/api/notifications/webhook/secret", status_code=200)
async def rotate_secret(state: State, caller: NamedDependency[Caller]) -> Secret:
    """A new signing secret; the old one stops working at once (shown once, like an API key)."""
    return Secret(webhook_secret=await preferences.rotate_secret(state.res.pool, caller.account_id,
                                                                 state.common.secret_key))


@post("/api/notifications/webhook/test", status_code=202)
async def test_webhook(state: State, caller: NamedDependency[Caller]) -> Delivery:
    """Queue a signed `webhook_test` delivery to the account's webhook, to check the receiving end."""
    queued = await deliveries.queue_test(state.res.pool, caller.account_id, state.common.secret_key)
    state.sender.wake()
    return queued


@get("/api/notifications/deliveries")
async def list_deliveries(state: State, caller: NamedDependency[Caller], status: FromQuery[str | None] = None,
                          channel: FromQuery[str | None] = None,
                          limit: FromQuery[int] = 50) -> list[Delivery]:
    return await deliveries.list_for(state.res.pool, caller.account_id, status=status, channel=channel,
                                     limit=limit)


@post("/api/notifications/deliveries/{delivery_id:int}/retry", status_code=202)
async def retry_delivery(state: State, caller: NamedDependency[Caller],
                         delivery_id: FromPath[int]) -> dict[str, int]:
    """Send a failed webhook again."""
    await deliveries.retry(state.res.pool, caller.account_id, delivery_id)
    state.sender.wake()
    return {"id": delivery_id}


def create_app(settings: NotifierSettings, common: CommonSettings) -> Litestar:
    # Filled once the resources are open; /readyz reads it at request time.
    checks: dict[str, ReadyCheck] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # The HTTP client outlives the resources: their exit stops the senders that use it.
        async with httpx.AsyncClient() as http, open_resources(common, "notifier", use_redis=False) as res:
            assert res.pool is not None and res.js is not None
            sender = Sender(res.pool, settings, common.secret_key, http)
            app.state.update(res=res, http=http, sender=sender, settings=settings, common=common)
            checks.update(res.ready_checks())
            ctx = Context(admin_emails=settings.admin_emails, admin_webhook=bool(settings.admin_webhook_url),
                          console_url=settings.console_url, product_name=settings.product_name)
            for spec in consumer.SPECS:
                handle = consumer.make_handler(res.pool, ctx, common.secret_key, spec.durable, sender.wake)
                res.spawn(bus.run_consumer(res.js, common.namespace, spec, handle, res.stop), spec.durable)
            for channel in CHANNELS:
                res.spawn(sender.run(channel, res.stop), f"notifier-send-{channel}")
            res.spawn(housekeeping.run(res.pool, settings, res.stop), "notifier-housekeeping")
            yield

    return Litestar(
        logging_config=web.logging_config(),
        route_handlers=[get_preferences, put_preferences, rotate_secret, test_webhook, list_deliveries,
                        retry_delivery, *ops_handlers(checks)],
        dependencies={"caller": Provide(provide_caller)},
        lifespan=[lifespan],
        middleware=[request_id_middleware],
        exception_handlers={ServiceError: service_error_handler},
    )


def from_env() -> Litestar:
    settings = config.load(NotifierSettings)
    common = config.load(CommonSettings)
    logs.setup("notifier", common.log_level, common.log_format)
    telemetry.setup("notifier", common.otel_exporter, common.otel_endpoint)
    return create_app(settings, common)
