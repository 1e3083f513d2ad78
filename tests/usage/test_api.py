"""The usage API as a console user and an admin would use it: dashboard, series with time zones, per-key
usage, the log with filters and cursor paging, the CSV export, and who may see what."""

from __future__ import annotations

import csv
import io
import json
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from bench.usage_bench import generate_rows
from services.usage import ingest, reports
from services.usage.app import create_app
from services.usage.config import UsageSettings
from services.usage.periods import Range
from shared.config import CommonSettings
from shared.runtime import Resources
from tests import procs
from tests.usage.conftest import as_admin, as_user, charged, recorded

Client = AsyncTestClient[Litestar]


async def _seed(res: Resources, *events: object) -> None:
    assert res.pool
    await ingest.apply_batch(res.pool, "usage-log", list(events))  # type: ignore[arg-type]


# --- access control ---------------------------------------------------------------------------------------


async def test_a_user_sees_only_their_own_rows_and_an_admin_sees_any(clean_usage: Resources,
                                                                     usage_client: Client) -> None:
    common = clean_usage.common
    a = [recorded("acct-a", "key-a1"), recorded("acct-a", "key-a2"), recorded("acct-a", "key-a1")]
    b = [recorded("acct-b", "key-b1"), recorded("acct-b", "key-b1")]
    await _seed(clean_usage, *a, *b)

    mine = (await usage_client.get("/api/usage/logs", headers=as_user(common, "acct-a"))).json()
    assert sorted(i["request_id"] for i in mine["items"]) == sorted(e.request_id for e in a)
    assert {i["channel_id"] for i in mine["items"]} == {""}  # routing detail is for operators
    assert all(i["upstream_cost_micros"] is None for i in mine["items"])

    for path in ("/api/usage/logs", "/api/usage/logs.csv", "/api/usage/summary", "/api/usage/series",
                 "/api/usage/keys"):
        other = await usage_client.get(path, params={"account_id": "acct-b"},
                                       headers=as_user(common, "acct-a"))
        assert other.status_code == 403, path
        assert other.json()["error"]["code"] == "forbidden"
    keys = (await usage_client.get("/api/usage/keys", headers=as_user(common, "acct-a"))).json()
    assert {k["key_id"] for k in keys} == {"key-a1", "key-a2"}

    everyone = (await usage_client.get("/api/usage/logs", headers=as_admin(common))).json()
    assert len(everyone["items"]) == 5
    assert {i["channel_id"] for i in everyone["items"]} == {"ch-1"}
    only_b = (await usage_client.get("/api/usage/logs", params={"account_id": "acct-b"},
                                     headers=as_admin(common))).json()
    assert sorted(i["request_id"] for i in only_b["items"]) == sorted(e.request_id for e in b)


async def test_callers_without_credentials_are_refused(clean_usage: Resources, usage_client: Client) -> None:
    assert (await usage_client.get("/api/usage/summary")).status_code == 401
    bad = await usage_client.get("/api/usage/summary",
                                 headers={"X-Internal-Token": "guess", "X-Account-Id": "acct-a"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
    no_account = await usage_client.get("/api/usage/summary",
                                        headers={"X-Internal-Token": clean_usage.common.internal_token})
    assert no_account.status_code == 400 and no_account.json()["error"]["code"] == "missing_account"


class _FakeKeysAndBilling(BaseHTTPRequestHandler):
    """keys' /internal/whoami (one valid session, everything else 401) and billing's wallet read, as their
    contracts describe them."""

    token = ""

    def do_GET(self) -> None:
        internal = self.headers.get("X-Internal-Token") == self.token
        if self.path == "/v1/billing/wallet":
            ok = internal and self.headers.get("X-Account-Id") == "acct-fresh"
            body = json.dumps({"account_id": "acct-fresh", "balance_micros": 4_321_000}).encode()
        else:
            ok = (self.path == "/internal/whoami" and internal
                  and self.headers.get("X-Session") == "good-session")
            body = json.dumps({"account_id": "acct-a", "user_id": "u-1", "role": "user",
                               "email": "a@example.com"}).encode()
        body = body if ok else b'{"error": {"code": "unauthorized"}}'
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_keys(common: CommonSettings) -> Iterator[str]:
    _FakeKeysAndBilling.token = common.internal_token
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKeysAndBilling)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_a_console_session_is_checked_with_keys(clean_usage: Resources, fake_keys: str) -> None:
    await _seed(clean_usage, recorded("acct-a"), recorded("acct-b"))
    common = msgspec.structs.replace(clean_usage.common, keys_url=fake_keys)
    app = create_app(UsageSettings(retention_interval_s=0), common, consumers=False)
    async with AsyncTestClient(app=app) as client:
        client.cookies.set("fg_session", "good-session")
        page = await client.get("/api/usage/logs")
        assert page.status_code == 200
        assert [i["account_id"] for i in page.json()["items"]] == ["acct-a"]
        client.cookies.set("fg_session", "stolen-or-expired")
        assert (await client.get("/api/usage/logs")).status_code == 401
        client.cookies.clear()
        by_header = await client.get("/api/usage/logs", headers={"X-Session": "good-session"})
        assert [i["account_id"] for i in by_header.json()["items"]] == ["acct-a"]

    down = msgspec.structs.replace(clean_usage.common, keys_url="http://127.0.0.1:9")  # nothing listens there
    async with AsyncTestClient(app=create_app(UsageSettings(retention_interval_s=0), down,
                                              consumers=False)) as client:
        client.cookies.set("fg_session", "good-session")
        refused = await client.get("/api/usage/logs")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "auth_unavailable"


async def test_a_real_keys_session_sees_only_its_own_account(clean_usage: Resources) -> None:
    """Against the keys service itself (a real `faregate keys` process): register, then read usage with the
    session cookie keys set; log out, and the same cookie is refused."""
    email = f"usage-{secrets.token_hex(4)}@example.com"
    with procs.running("keys", ready_path="/readyz") as keys:
        async with httpx.AsyncClient(base_url=keys.url, timeout=10) as http:
            reg = await http.post("/api/auth/register",
                                  json={"email": email, "password": "correct horse 42!"})
            assert reg.status_code == 201, reg.text
            account_id = reg.json()["account"]["id"]
            session, csrf = reg.cookies["fg_session"], reg.json()["csrf_token"]
            await _seed(clean_usage, recorded(account_id), recorded(account_id),
                        recorded("acct-someone-else"))

            common = msgspec.structs.replace(clean_usage.common, keys_url=keys.url)
            app = create_app(UsageSettings(retention_interval_s=0), common, consumers=False)
            async with AsyncTestClient(app=app) as client:
                client.cookies.set("fg_session", session)
                page = await client.get("/api/usage/logs")
                assert page.status_code == 200, page.text
                assert [i["account_id"] for i in page.json()["items"]] == [account_id, account_id]
                assert (await client.get("/api/usage/logs", params={"account_id": "acct-someone-else"})
                        ).status_code == 403
                out = await http.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})  # cookie: the jar
                assert out.status_code == 204, out.text
                assert (await client.get("/api/usage/summary")).status_code == 401


# --- dashboard --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tz", ["UTC", "Asia/Tokyo", "America/Los_Angeles"])
async def test_the_dashboard_counts_today_this_week_and_this_month(
        clean_usage: Resources, usage_client: Client, tz: str) -> None:
    now = datetime.now(UTC)
    evs = [
        recorded(model="gpt-4o", prompt=1000, completion=100, at=now - timedelta(minutes=1)),
        recorded(model="gpt-4o-mini", prompt=10, completion=5, at=now - timedelta(hours=20)),
        recorded(model="gpt-4o-mini", prompt=20, completion=5, status=500, at=now - timedelta(days=3)),
        recorded(model="gpt-4o", prompt=30, completion=5, at=now - timedelta(days=12)),
        recorded(model="gpt-4o", prompt=40, completion=5, at=now - timedelta(days=40)),
        recorded("acct-other", at=now - timedelta(minutes=1)),
    ]
    costs = [900, 20, 0, 30, 40, 5]
    await _seed(clean_usage, *evs)
    await _seed(clean_usage, *[charged(e, c, balance=10_000 - i, at=now - timedelta(seconds=60 - i))
                               for i, (e, c) in enumerate(zip(evs, costs, strict=True))
                               if e.account_id == "acct-a"])

    got = (await usage_client.get("/api/usage/summary", params={"tz": tz},
                                  headers=as_user(clean_usage.common, "acct-a"))).json()
    zone = ZoneInfo(tz)
    starts = {p: datetime.fromisoformat(got[p]["since"]) for p in ("today", "week", "month")}
    local = {p: s.astimezone(zone) for p, s in starts.items()}
    assert (local["today"].hour, local["today"].minute) == (0, 0)
    assert local["week"].weekday() == 0 and local["week"].hour == 0
    assert local["month"].day == 1 and local["month"].hour == 0
    mine = [(e, c) for e, c in zip(evs, costs, strict=True) if e.account_id == "acct-a"]
    for period, since in starts.items():
        inside = [(e, c) for e, c in mine if e.occurred_at >= since]
        assert got[period]["requests"] == len(inside), period
        assert got[period]["errors"] == sum(1 for e, _ in inside if e.status >= 400), period
        assert got[period]["prompt_tokens"] == sum(e.prompt_tokens for e, _ in inside), period
        assert got[period]["completion_tokens"] == sum(e.completion_tokens for e, _ in inside), period
        assert got[period]["cost_micros"] == sum(c for _, c in inside), period
    assert got["balance_micros"] == 10_000 - 4  # the newest charge's balance
    assert got["balance_source"] == "events"
    month = [(e, c) for e, c in mine if e.occurred_at >= starts["month"]]
    by_model = {m["model"]: m for m in got["by_model"]}
    assert set(by_model) == {e.model for e, _ in month}
    assert [m["cost_micros"] for m in got["by_model"]] == sorted((m["cost_micros"] for m in got["by_model"]),
                                                                 reverse=True)


async def test_the_dashboard_narrowed_to_one_key_shows_only_that_keys_numbers(clean_usage: Resources,
                                                                              usage_client: Client) -> None:
    common = clean_usage.common
    a1 = [recorded("acct-a", "key-a1", "gpt-4o", prompt=1000, completion=100) for _ in range(2)]
    a2 = [recorded("acct-a", "key-a2", "gpt-4o-mini", prompt=10, completion=5, status=502)]
    b1 = [recorded("acct-b", "key-b1", "claude-sonnet", prompt=7, completion=3)]
    await _seed(clean_usage, *a1, *a2, *b1)
    await _seed(clean_usage, charged(a1[0], 400, 9_600), charged(a1[1], 400, 9_200), charged(b1[0], 50, 950))

    async def summary(headers: dict[str, str], **params: str) -> dict[str, Any]:
        resp = await usage_client.get("/api/usage/summary", params=params, headers=headers)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def models(body: dict[str, Any]) -> list[tuple[str, int, int, int]]:
        return [(m["model"], m["requests"], m["errors"], m["cost_micros"]) for m in body["by_model"]]

    user = as_user(common, "acct-a")
    whole = await summary(user)
    assert models(whole) == [("gpt-4o", 2, 0, 800), ("gpt-4o-mini", 1, 1, 0)]
    one = await summary(user, key_id="key-a1")
    assert one["key_id"] == "key-a1"
    assert models(one) == [("gpt-4o", 2, 0, 800)]
    for period in ("today", "week", "month"):
        assert one[period] == {**whole[period], "requests": 2, "errors": 0,
                               "prompt_tokens": 2000, "completion_tokens": 200, "cost_micros": 800}, period
    assert one["balance_micros"] == whole["balance_micros"] == 9_200  # a key has no wallet: the account's
    other = await summary(user, key_id="key-a2")
    assert models(other) == [("gpt-4o-mini", 1, 1, 0)]
    assert (other["month"]["requests"], other["month"]["prompt_tokens"]) == (1, 10)

    # Another account's key reads exactly like a key that does not exist: nothing says it is somebody's.
    theirs, nobodys = await summary(user, key_id="key-b1"), await summary(user, key_id="key-nope")
    assert models(theirs) == [] and theirs["month"]["requests"] == 0
    assert {**theirs, "key_id": None} == {**nobodys, "key_id": None}
    series = {k: await usage_client.get("/api/usage/series", params={"key_id": k}, headers=user)
              for k in ("key-a1", "key-b1", "key-nope")}
    assert sum(p["requests"] for p in series["key-a1"].json()["points"]) == 2
    assert series["key-b1"].status_code == series["key-nope"].status_code == 200
    assert series["key-b1"].json()["points"] == series["key-nope"].json()["points"] == []
    # Naming the other account outright stays refused, key or not.
    refused = await usage_client.get("/api/usage/summary", params={"account_id": "acct-b", "key_id": "key-b1"},
                                     headers=user)
    assert refused.status_code == 403

    # An admin filters by any account's key, with or without naming the account.
    for params in ({"key_id": "key-b1"}, {"key_id": "key-b1", "account_id": "acct-b"}):
        ops = await summary(as_admin(common), **params)
        assert models(ops) == [("claude-sonnet", 1, 0, 50)], params
    ops_series = await usage_client.get("/api/usage/series", params={"key_id": "key-a2", "group_by": "model"},
                                        headers=as_admin(common))
    assert [(p["group"], p["requests"]) for p in ops_series.json()["points"]] == [("gpt-4o-mini", 1)]


async def test_a_balance_no_event_has_reported_yet_comes_from_billing(clean_usage: Resources,
                                                                      fake_keys: str) -> None:
    common = msgspec.structs.replace(clean_usage.common, billing_url=fake_keys)
    async with AsyncTestClient(app=create_app(UsageSettings(retention_interval_s=0), common,
                                              consumers=False)) as client:
        fresh = (await client.get("/api/usage/summary", headers=as_user(common, "acct-fresh"))).json()
        assert (fresh["balance_micros"], fresh["balance_source"]) == (4_321_000, "billing")
        assert fresh["today"]["requests"] == 0
        # Billing refuses this one (401 here): the dashboard still answers, without a balance.
        other = (await client.get("/api/usage/summary", headers=as_user(common, "acct-nobody"))).json()
        assert (other["balance_micros"], other["balance_source"]) == (None, "unknown")


async def test_a_bad_time_zone_is_a_clear_400(clean_usage: Resources, usage_client: Client) -> None:
    for tz in ("Mars/Olympus", "../../etc/passwd", ""):
        r = await usage_client.get("/api/usage/summary", params={"tz": tz},
                                   headers=as_user(clean_usage.common, "acct-a"))
        assert r.status_code == 400, tz
        assert r.json()["error"]["code"] == "invalid_tz" and r.json()["error"]["field"] == "tz"


# --- time series ------------------------------------------------------------------------------------------


async def test_series_buckets_follow_the_callers_day_boundaries(clean_usage: Resources,
                                                               usage_client: Client) -> None:
    # 03:00 UTC is still the previous evening in New York (UTC-4 after the 8 March 2026 clock change).
    early = recorded(model="gpt-4o", at=datetime(2026, 3, 10, 3, 0, tzinfo=UTC), prompt=7)
    late = recorded(model="gpt-4o-mini", at=datetime(2026, 3, 10, 15, 0, tzinfo=UTC), prompt=11)
    await _seed(clean_usage, early, late, charged(early, 100, 1), charged(late, 50, 0))
    user = as_user(clean_usage.common, "acct-a")
    span = {"from": "2026-03-08T00:00:00Z", "to": "2026-03-12T00:00:00Z"}

    utc = (await usage_client.get("/api/usage/series", params={**span, "granularity": "day"},
                                  headers=user)).json()
    assert [(p["bucket"], p["requests"], p["cost_micros"]) for p in utc["points"]] == [
        ("2026-03-10T00:00:00Z", 2, 150)]

    ny = (await usage_client.get("/api/usage/series", params={**span, "granularity": "day",
                                                              "tz": "America/New_York"}, headers=user)).json()
    assert [(p["bucket"], p["requests"], p["prompt_tokens"]) for p in ny["points"]] == [
        ("2026-03-09T00:00:00-04:00", 1, 7), ("2026-03-10T00:00:00-04:00", 1, 11)]

    by_model = (await usage_client.get("/api/usage/series", headers=user, params={
        **span, "granularity": "month", "group_by": "model"})).json()
    assert [(p["group"], p["cost_micros"]) for p in by_model["points"]] == [
        ("gpt-4o", 100), ("gpt-4o-mini", 50)]

    hourly = (await usage_client.get("/api/usage/series", params={**span, "granularity": "hour",
                                                                  "group_by": "key"}, headers=user)).json()
    assert [(p["bucket"], p["group"]) for p in hourly["points"]] == [
        ("2026-03-10T03:00:00Z", "key-a1"), ("2026-03-10T15:00:00Z", "key-a1")]

    weekly = (await usage_client.get("/api/usage/series", params={**span, "granularity": "week"},
                                     headers=user)).json()
    assert [(p["bucket"], p["requests"]) for p in weekly["points"]] == [("2026-03-09T00:00:00Z", 2)]


async def test_series_refuses_what_it_cannot_answer(clean_usage: Resources, usage_client: Client) -> None:
    user = as_user(clean_usage.common, "acct-a")
    cases = [
        ({"granularity": "minute"}, "invalid_granularity"),
        ({"group_by": "user"}, "invalid_group_by"),
        ({"granularity": "hour", "from": "2020-01-01", "to": "2026-01-01"}, "range_too_large"),
        ({"from": "yesterday"}, "invalid_time"),
        ({"from": "2026-03-02", "to": "2026-03-01"}, "invalid_range"),
    ]
    for params, code in cases:
        r = await usage_client.get("/api/usage/series", params=params, headers=user)
        assert (r.status_code, r.json()["error"]["code"]) == (400, code), params


# --- per key ----------------------------------------------------------------------------------------------


async def test_usage_per_key(clean_usage: Resources, usage_client: Client) -> None:
    a1 = [recorded(key_id="key-a1", prompt=100, completion=10) for _ in range(3)]
    a2 = [recorded(key_id="key-a2", prompt=5, completion=1, status=502)]
    await _seed(clean_usage, *a1, *a2, *[charged(e, 10, 0) for e in a1])
    got = (await usage_client.get("/api/usage/keys", headers=as_user(clean_usage.common, "acct-a"))).json()
    assert [(k["key_id"], k["requests"], k["errors"], k["prompt_tokens"], k["cost_micros"]) for k in got] == [
        ("key-a1", 3, 0, 300, 30), ("key-a2", 1, 1, 5, 0)]


# --- the log ----------------------------------------------------------------------------------------------


async def test_the_log_filters_and_pages_with_a_cursor(clean_usage: Resources, usage_client: Client) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    evs = [recorded(key_id=f"key-a{i % 2}", model="gpt-4o" if i % 3 else "o3-mini",
                    status=429 if i == 4 else 200, at=now - timedelta(minutes=i)) for i in range(8)]
    # Two requests in the same microsecond still page deterministically (ties broken by request id).
    evs.append(recorded(key_id="key-a0", at=evs[2].occurred_at))
    await _seed(clean_usage, *evs, recorded("acct-b"))
    user = as_user(clean_usage.common, "acct-a")

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
        page = (await usage_client.get("/api/usage/logs", params=params, headers=user)).json()
        seen += [i["request_id"] for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 9
    expected = sorted(evs, key=lambda e: (e.occurred_at, e.request_id), reverse=True)
    assert seen == [e.request_id for e in expected]

    async def ids(**params: str) -> set[str]:
        r = await usage_client.get("/api/usage/logs", params=params, headers=user)
        assert r.status_code == 200, r.text
        return {i["request_id"] for i in r.json()["items"]}

    assert await ids(key_id="key-a1") == {e.request_id for e in evs if e.key_id == "key-a1"}
    assert await ids(model="o3-mini") == {e.request_id for e in evs if e.model == "o3-mini"}
    assert await ids(status="error") == {evs[4].request_id}
    assert await ids(status="429") == {evs[4].request_id}
    assert await ids(status="ok") == {e.request_id for e in evs if e.status < 400}
    lo, hi = now - timedelta(minutes=5), now - timedelta(minutes=2)
    window = {"from": lo.isoformat(), "to": hi.isoformat()}
    assert await ids(**window) == {e.request_id for e in evs if lo <= e.occurred_at < hi}

    for params, code in (({"cursor": "not-a-cursor"}, "invalid_cursor"), ({"limit": "0"}, "invalid_limit"),
                         ({"limit": "many"}, "invalid_parameter"), ({"status": "teapot"}, "invalid_status")):
        r = await usage_client.get("/api/usage/logs", params=params, headers=user)
        assert (r.status_code, r.json()["error"]["code"]) == (400, code), params


async def test_csv_export_of_a_large_range_streams_every_row(clean_usage: Resources,
                                                            usage_client: Client) -> None:
    assert clean_usage.pool
    now = datetime.now(UTC)
    start = now - timedelta(days=45)  # spans two or three month partitions
    await generate_rows(clean_usage.pool, 40_000, start, now, accounts=8)
    span = {"from": start.isoformat(), "to": (now + timedelta(seconds=1)).isoformat()}
    expected = await clean_usage.pool.fetchval(
        "SELECT count(*) FROM usage.request_log WHERE account_id = 'acct-3'")
    assert expected == 5_000

    r = await usage_client.get("/api/usage/logs.csv", params=span,
                               headers=as_user(clean_usage.common, "acct-3"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == expected
    assert {row["account_id"] for row in rows} == {"acct-3"}
    assert rows[0]["time"] >= rows[-1]["time"]  # newest first, like the log page
    assert all(int(row["cost_micros"]) >= 0 and row["channel_id"] == "" for row in rows[:100])
    tokyo = await usage_client.get("/api/usage/logs.csv", headers=as_user(clean_usage.common, "acct-3"),
                                   params={**span, "tz": "Asia/Tokyo", "key_id": "key-3-0"})
    local = list(csv.DictReader(io.StringIO(tokyo.text)))
    assert local and all(row["time"].endswith("+09:00") for row in local)
    by_id = {row["request_id"]: row["time"] for row in rows}
    assert all(datetime.fromisoformat(row["time"]) == datetime.fromisoformat(by_id[row["request_id"]])
               for row in local)

    admin = await usage_client.get("/api/usage/logs.csv", params={**span, "status": "error"},
                                   headers=as_admin(clean_usage.common))
    assert len(admin.text.strip().splitlines()) - 1 == 40_000 // 50  # every 50th generated row failed

    # The export is produced in bounded chunks from a server-side cursor, never as one big string.
    f = reports.LogFilter(None, Range(start, now + timedelta(seconds=1)))
    chunks = 0
    lines = 0
    async for chunk in reports.export_csv(clean_usage.pool, f, admin=True, rows_per_chunk=1_000):
        chunks += 1
        assert chunk.count(b"\r\n") <= 1_000
        lines += chunk.count(b"\r\n")
    assert lines == 40_001 and chunks == 41
