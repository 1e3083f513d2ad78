"""The usage service: consumers that build the request log and aggregates, and the usage API.

  GET /api/usage/summary      dashboard: balance; requests, tokens and spend today / this week / this month;
                              this month by model; `key_id`: one API key's numbers (the balance stays the account's)
  GET /api/usage/series       spend, requests and tokens per hour / day / week / month, by model or key;
                              `key_id`: one API key's
  GET /api/usage/keys         usage per API key over a range
  GET /api/usage/logs         the request log, filtered (time range, key, model, status), cursor-paged
  GET /api/usage/logs.csv     the same filter as CSV, streamed
  GET /api/usage/members      usage per person over a range (an organisation's members)

Every read takes `tz` (IANA zone; default UTC) for where days begin, and `account_id` (admins: any account or,
left out, all; users: only their own). Who is calling: see `auth.py`. A `key_id` filter only ever narrows the
account in scope: another account's key reads as an unused one (zeros, no rows), never as a refusal that would
tell a user the key exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import asyncpg
import httpx
from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import ValidationException
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream
from prometheus_client import Gauge

from services.usage import balance, consumer, periods, reports, retention
from services.usage.auth import Authenticator, Principal, scope
from services.usage.config import UsageSettings
from shared import config, logs, telemetry, web
from shared.config import CommonSettings
from shared.runtime import open_resources
from shared.web import ReadyCheck, ServiceError, ops_handlers, request_id_middleware, service_error_handler

DB_POOL = Gauge("faregate_db_pool_connections", "Postgres pool connections by state (in_use, idle, max)",
                ["service", "state"], multiprocess_mode="livesum")


async def _watch_pool(pool: asyncpg.Pool, service: str, stop: asyncio.Event, every_s: float = 5.0) -> None:
    while not stop.is_set():
        size, idle = pool.get_size(), pool.get_idle_size()
        DB_POOL.labels(service, "in_use").set(size - idle)
        DB_POOL.labels(service, "idle").set(idle)
        DB_POOL.labels(service, "max").set(pool.get_max_size())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def current_principal(request: Request[Any, Any, Any]) -> Principal:
    auth: Authenticator = request.app.state.auth
    who = await auth.principal(request.headers, request.cookies)
    # An organisation's members read its usage by naming it (services/keys/orgs.py decides their role).
    return await auth.as_org_member(who, request.query_params.get("account_id"),
                                    export=request.url.path.endswith(".csv"))


def _pool(state: State) -> asyncpg.Pool:
    pool: asyncpg.Pool = state.resources.pool
    return pool


# --- handlers -------------------------------------------------------------------------------------------

Who = NamedDependency[Principal]
Tz = Annotated[str, QueryParameter(description="IANA time zone for day boundaries")]
Account = Annotated[str | None, QueryParameter(description="admins: one account (default all); users: own")]
Since = Annotated[str | None, QueryParameter(name="from", description="ISO 8601; no offset: read in `tz`")]
Until = Annotated[str | None, QueryParameter(name="to", description="ISO 8601, exclusive; default now")]
Text = FromQuery[str | None]
KeyId = Annotated[str | None, QueryParameter(description="one API key of the account in scope")]


@get("/api/usage/summary")
async def get_summary(state: State, who: Who, tz: Tz = "UTC", account_id: Account = None,
                      key_id: KeyId = None) -> reports.Summary:
    account = scope(who, account_id)
    summary = await reports.summary(_pool(state), account, periods.zone(tz), datetime.now(UTC), key_id or "")
    if account and summary.balance_micros is None:
        common: CommonSettings = state.common
        summary.balance_micros = await balance.from_billing(state.http, common.billing_url,
                                                            common.internal_token, account)
        summary.balance_source = "billing" if summary.balance_micros is not None else "unknown"
    return summary


@get("/api/usage/series")
async def get_series(state: State, who: Who, granularity: FromQuery[str] = "day",
                     group_by: FromQuery[str] = "none", tz: Tz = "UTC", account_id: Account = None,
                     from_: Since = None, to: Until = None, key_id: KeyId = None) -> reports.Series:
    zone = periods.zone(tz)
    span = timedelta(days=2) if granularity == "hour" else timedelta(days=30)
    rng = periods.time_range(from_, to, zone, datetime.now(UTC), span)
    periods.check_series(granularity, group_by, rng, state.settings.max_series_buckets)
    return await reports.series(_pool(state), scope(who, account_id), rng, zone, granularity, group_by,
                                key_id or "")


@get("/api/usage/keys")
async def get_keys(state: State, who: Who, tz: Tz = "UTC", account_id: Account = None,
                   from_: Since = None, to: Until = None) -> list[reports.KeyUsage]:
    rng = periods.time_range(from_, to, periods.zone(tz), datetime.now(UTC), timedelta(days=30))
    return await reports.keys_usage(_pool(state), scope(who, account_id), rng)


@get("/api/usage/members", summary="Usage per person (an organisation's members) over a range")
async def get_members(state: State, who: Who, tz: Tz = "UTC", account_id: Account = None,
                      from_: Since = None, to: Until = None) -> list[reports.MemberUsage]:
    account = scope(who, account_id)
    if account is None:
        raise ServiceError("name the account (or organisation) with account_id", field="account_id")
    rng = periods.time_range(from_, to, periods.zone(tz), datetime.now(UTC), timedelta(days=30))
    return await reports.members_usage(_pool(state), account, rng)


def _log_filter(who: Principal, account_id: str | None, tz: str, from_: str | None, to: str | None,
                key_id: str | None, model: str | None, status: str | None) -> reports.LogFilter:
    rng = periods.time_range(from_, to, periods.zone(tz), datetime.now(UTC), timedelta(days=30))
    lo, hi = reports.status_range(status)
    return reports.LogFilter(scope(who, account_id), rng, key_id or "", model or "", lo, hi)


@get("/api/usage/logs")
async def get_logs(state: State, who: Who, tz: Tz = "UTC", account_id: Account = None,
                   from_: Since = None, to: Until = None, key_id: Text = None,
                   model: Text = None, status: Text = None, limit: FromQuery[int] = 50,
                   cursor: Text = None) -> reports.LogPage:
    if not 1 <= limit <= state.settings.max_page_size:
        raise ServiceError(f"limit must be between 1 and {state.settings.max_page_size}",
                           code="invalid_limit", field="limit")
    f = _log_filter(who, account_id, tz, from_, to, key_id, model, status)
    return await reports.log_page(_pool(state), f, limit=limit, cursor=cursor, admin=who.is_admin)


@get("/api/usage/logs.csv")
async def get_logs_csv(state: State, who: Who, tz: Tz = "UTC", account_id: Account = None,
                       from_: Since = None, to: Until = None, key_id: Text = None,
                       model: Text = None, status: Text = None) -> Stream:
    f = _log_filter(who, account_id, tz, from_, to, key_id, model, status)
    name = f"usage-{f.rng.start:%Y%m%d}-{f.rng.end:%Y%m%d}.csv"
    return Stream(reports.export_csv(_pool(state), f, admin=who.is_admin, tz=periods.zone(tz)),
                  media_type="text/csv; charset=utf-8",
                  headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _bad_parameter(request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    return Response({"error": {"code": "invalid_parameter", "message": str(exc.detail)}}, status_code=400)


# --- wiring ---------------------------------------------------------------------------------------------


def create_app(settings: UsageSettings, common: CommonSettings, *, consumers: bool = True) -> Litestar:
    # /readyz checks the resources the lifespan opens: the dict is filled once they exist.
    checks: dict[str, ReadyCheck] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_resources(common, "usage", use_redis=False, pool_size=settings.pool_size) as res, \
                httpx.AsyncClient() as http:
            assert res.pool is not None and res.js is not None
            app.state.resources = res
            app.state.settings = settings
            app.state.common = common
            app.state.http = http
            app.state.auth = Authenticator(keys_url=common.keys_url, internal_token=common.internal_token,
                                           session_cookie=settings.session_cookie, http=http)
            checks.update(res.ready_checks())
            if consumers:
                log_spec = dataclasses.replace(consumer.LOG_CONSUMER, batch=settings.batch_size)
                for spec in (log_spec, consumer.BALANCE_CONSUMER):
                    res.spawn(consumer.run(res.js, common.namespace, res.pool, spec, res.stop), spec.durable)
            if settings.retention_interval_s > 0:
                res.spawn(retention.run_forever(res.pool, settings.retention_days,
                                                settings.retention_interval_s, res.stop), "usage-retention")
            res.spawn(_watch_pool(res.pool, "usage", res.stop), "usage-pool-gauge")
            yield

    return Litestar(
        logging_config=web.logging_config(),
        route_handlers=[get_summary, get_series, get_keys, get_members, get_logs, get_logs_csv,
                        *ops_handlers(checks)],
        dependencies={"who": Provide(current_principal)},
        middleware=[request_id_middleware],
        exception_handlers={ServiceError: service_error_handler, ValidationException: _bad_parameter},
        lifespan=[lifespan],
    )


def from_env() -> Litestar:
    settings = config.load(UsageSettings)
    common = config.load(CommonSettings)
    logs.setup("usage", common.log_level, common.log_format)
    telemetry.setup("usage", common.otel_exporter, common.otel_endpoint)
    return create_app(settings, common)
