"""The notifier process: event consumers that fill the outbox, senders that empty it, and a small HTTP API for
notification preferences and delivery history under /api/notifications/."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import msgspec
from litestar import Litestar, Request, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody

from services.notifier import consumer, housekeeping, repo
from services.notifier.auth import Caller, caller_of
from services.notifier.config import NotifierSettings
from services.notifier.notifications import Context, Planned, account_recipient
from services.notifier.preferences import (
    PrefsUpdate,
    PrefsView,
    apply_update,
    new_webhook_secret,
    stored_from_row,
    view,
)
from services.notifier.sender import CHANNELS, Sender
from shared import bus, config, crypto, logs, telemetry
from shared.config import CommonSettings
from shared.events import new_id
from shared.runtime import open_resources
from shared.web import (
    NotFound,
    ReadyCheck,
    ServiceError,
    ops_handlers,
    request_id_middleware,
    service_error_handler,
)


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    channel: str
    kind: str
    event_type: str
    status: str  # pending | sent | failed | cancelled
    attempts: int
    last_error: str | None
    destination: str | None
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None


class Secret(msgspec.Struct, frozen=True, kw_only=True):
    webhook_secret: str  # shown once


async def provide_caller(request: Request[Any, Any, State]) -> Caller:
    state = request.app.state
    return await caller_of(request, state.http, state.common)


@get("/api/notifications/preferences")
async def get_preferences(state: State, caller: NamedDependency[Caller]) -> PrefsView:
    async with state.res.pool.acquire() as conn:
        row = await conn.fetchrow(repo.GET_PREFS, caller.account_id)
    return view(stored_from_row(row, caller.account_id))


@put("/api/notifications/preferences")
async def put_preferences(state: State, caller: NamedDependency[Caller],
                          data: JSONBody[PrefsUpdate]) -> PrefsView:
    settings: NotifierSettings = state.settings
    async with state.res.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(repo.GET_PREFS + " FOR UPDATE", caller.account_id)
        new, plain = apply_update(stored_from_row(row, caller.account_id), data,
                                  secret_key=state.common.secret_key,
                                  allow_private=settings.webhook_allow_private)
        saved = await conn.fetchrow(repo.UPSERT_PREFS, new.account_id, new.email, list(new.email_alerts),
                                    new.webhook_url, new.webhook_secret, list(new.webhook_alerts))
    return view(stored_from_row(saved, caller.account_id), plain)


@post("/api/notifications/webhook/secret", status_code=200)
async def rotate_secret(state: State, caller: NamedDependency[Caller]) -> Secret:
    """A new signing secret; the old one stops working at once (shown once, like an API key)."""
    plain = new_webhook_secret()
    async with state.res.pool.acquire() as conn:
        done = await conn.execute(repo.REPLACE_SIGNING_KEY, caller.account_id,
                                  crypto.seal(plain, state.common.secret_key))
    if done.endswith(" 0"):
        raise ServiceError("set a webhook_url first", code="no_webhook", status=409)
    return Secret(webhook_secret=plain)


@post("/api/notifications/webhook/test", status_code=202)
async def test_webhook(state: State, caller: NamedDependency[Caller]) -> Delivery:
    """Queue a signed `webhook.test` delivery to the account's webhook, to check the receiving end."""
    async with state.res.pool.acquire() as conn:
        prefs = await conn.fetchrow(repo.GET_PREFS, caller.account_id)
        if prefs is None or not prefs["webhook_url"]:
            raise ServiceError("set a webhook_url first", code="no_webhook", status=409)
        item = Planned(f"webhook.test:{new_id()}", "webhook", account_recipient(caller.account_id),
                       caller.account_id, "webhook_test", "webhook.test", {},
                       {"account_id": caller.account_id, "message": "a test delivery from Faregate"})
        await consumer.insert(conn, item, state.common.secret_key)
        row = await conn.fetchrow(repo.GET_DELIVERY, item.dedupe_key)
    state.sender.wake()
    return Delivery(**dict(row))


@get("/api/notifications/deliveries")
async def list_deliveries(state: State, caller: NamedDependency[Caller], status: FromQuery[str | None] = None,
                          channel: FromQuery[str | None] = None,
                          limit: FromQuery[int] = 50) -> list[Delivery]:
    if status is not None and status not in ("pending", "sent", "failed", "cancelled"):
        raise ServiceError("status must be pending, sent, failed or cancelled", code="invalid_status",
                           field="status")
    if channel is not None and channel not in CHANNELS:
        raise ServiceError("channel must be email or webhook", code="invalid_channel", field="channel")
    async with state.res.pool.acquire() as conn:
        rows = await conn.fetch(repo.LIST_DELIVERIES, caller.account_id, status, channel,
                                max(1, min(limit, 500)))
    return [Delivery(**dict(r)) for r in rows]


@post("/api/notifications/deliveries/{delivery_id:int}/retry", status_code=202)
async def retry_delivery(state: State, caller: NamedDependency[Caller],
                         delivery_id: FromPath[int]) -> dict[str, int]:
    async with state.res.pool.acquire() as conn:
        found = await conn.fetchval(repo.RETRY_FAILED, delivery_id, caller.account_id)
    if found is None:
        raise NotFound("no failed webhook delivery with that id")
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
        route_handlers=[get_preferences, put_preferences, rotate_secret, test_webhook, list_deliveries,
                        retry_delivery,
                        *ops_handlers(checks)],
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
