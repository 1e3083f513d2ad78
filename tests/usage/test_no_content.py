"""The no-content proof: a unique marker sent as prompt text through the real stack (gateway, mock upstream,
keys, billing, usage, notifier, each a real process on real Postgres, Redis and NATS) appears nowhere we keep
anything: not in any table of any schema, not in any NATS stream's messages or headers, not in Redis, not in
any service's log (at DEBUG). The completion text the client received is searched for the same way.

The mock upstream's own log is left out on purpose: it stands in for the external provider, which receives the
prompt by definition.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Iterator

import asyncpg
import httpx
import nats
import openai
import pytest

from services.billing import seed as billing_seed
from services.keys import seed as keys_seed
from shared import bus, cache
from shared.config import CommonSettings
from tests import procs

MODEL = "gpt-4o-mini"
SERVICES = ("mock-upstream", "keys", "billing", "usage", "notifier", "gateway")


@pytest.fixture(scope="module")
def stack(common: CommonSettings) -> Iterator[dict[str, procs.ServiceProcess]]:
    ports = {name: procs.free_port() for name in SERVICES}
    env = {
        "FAREGATE_KEYS_URL": f"http://127.0.0.1:{ports['keys']}",
        "FAREGATE_BILLING_URL": f"http://127.0.0.1:{ports['billing']}",
        "FAREGATE_USAGE_URL": f"http://127.0.0.1:{ports['usage']}",
        "FAREGATE_LOG_LEVEL": "DEBUG",  # the most a service would ever write
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    started: dict[str, procs.ServiceProcess] = {}
    try:
        for name in SERVICES:
            started[name] = procs.start(name, env, port=ports[name], ready_path="/readyz")
        yield started
    finally:
        for sp in reversed(list(started.values())):
            sp.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def _poll(pool: asyncpg.Pool, sql: str, *args: object, want: int, seconds: float = 30) -> int:
    deadline = time.monotonic() + seconds
    got = -1
    while time.monotonic() < deadline:
        got = int(await pool.fetchval(sql, *args))
        if got >= want:
            return got
        await asyncio.sleep(0.2)
    return got


async def _tables_containing(pool: asyncpg.Pool, needles: list[str]) -> tuple[int, list[str]]:
    """(tables searched, "schema.table" of each one holding a needle). Whole rows are searched as text, and
    bytea columns in hex (how a row renders them)."""
    tables = await pool.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
        " AND table_schema NOT IN ('pg_catalog', 'information_schema')")
    hits = []
    for t in tables:
        name = f'"{t["table_schema"]}"."{t["table_name"]}"'
        for needle in needles:
            n = await pool.fetchval(
                f"SELECT count(*) FROM {name} AS x WHERE strpos(x::text, $1) > 0 OR strpos(x::text, $2) > 0",
                needle, needle.encode().hex())
            if n:
                hits.append(f"{t['table_schema']}.{t['table_name']}")
    return len(tables), hits


async def _stream_messages(common: CommonSettings) -> list[bytes]:
    """Every message (headers and data) in every stream of this namespace."""
    nc = await nats.connect(common.nats_url)
    out = []
    try:
        js = nc.jetstream()
        for spec in bus.STREAMS:
            info = await js.stream_info(bus.stream_name(common.namespace, spec))
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(bus.stream_name(common.namespace, spec), seq)
                except Exception:
                    continue  # a deleted sequence
                out.append(repr(msg.headers).encode() + b"\n" + (msg.data or b""))
    finally:
        await nc.close()
    return out


async def _redis_values(common: CommonSettings) -> list[bytes]:
    r = cache.client(common.redis_url)
    out: list[bytes] = []
    try:
        async for key in r.scan_iter(f"{common.namespace}:*", count=1000):
            kind = (await r.type(key)).decode()
            if kind == "string":
                out.append(await r.get(key) or b"")
            elif kind == "hash":
                out += [k + b"=" + v for k, v in (await r.hgetall(key)).items()]
            elif kind == "list":
                out += await r.lrange(key, 0, -1)
            elif kind == "set":
                out += list(await r.smembers(key))
            elif kind == "zset":
                out += await r.zrange(key, 0, -1)
            out.append(key)
    finally:
        await r.aclose()
    return out


async def test_no_prompt_or_completion_is_kept_anywhere(common: CommonSettings,
                                                        stack: dict[str, procs.ServiceProcess]) -> None:
    marker = f"FG-MARKER-{secrets.token_hex(12)}"
    demo = await keys_seed.seed_demo(common, upstream_base_url=stack["mock-upstream"].url)
    await billing_seed.seed_demo(common, account_id=demo.account_id, amount_micros=5_000_000)
    client = openai.AsyncOpenAI(base_url=stack["gateway"].url + "/v1", api_key=demo.api_key, max_retries=0)
    prompt = [{"role": "system", "content": f"system {marker}"},
              {"role": "user", "content": f"Tell me about {marker} please."}]

    plain = await client.chat.completions.with_raw_response.create(model=MODEL, messages=prompt,
                                                                   max_tokens=48)
    completions = [plain.parse().choices[0].message.content or ""]
    stream = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=prompt, max_tokens=48, stream=True, stream_options={"include_usage": True})
    parts = []
    async for chunk in stream.parse():
        parts += [c.delta.content or "" for c in chunk.choices]
    completions.append("".join(parts))
    # A failing request (unknown model) carries the marker too: error paths log the most.
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=prompt)
    ids = [plain.headers["x-request-id"], stream.headers["x-request-id"]]
    assert all(len(c) >= 20 for c in completions)
    needles = [marker, *completions]

    pool = await asyncpg.create_pool(common.database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        # Wait until the metadata did land where it should: the search below is of a stack that did its work.
        assert await _poll(pool, "SELECT count(*) FROM usage.request_log WHERE request_id = ANY($1)", ids,
                           want=2) == 2
        assert await _poll(pool, "SELECT count(*) FROM usage.request_log WHERE charged_at IS NOT NULL"
                           " AND request_id = ANY($1)", ids, want=2) == 2
        row = await pool.fetchrow("SELECT prompt_tokens, completion_tokens FROM usage.request_log"
                                  " WHERE request_id = $1", ids[0])
        assert row is not None and row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        searched, hits = await _tables_containing(pool, needles)
        # Controls: the search does find what is there (the request id), in the usage and billing schemas.
        _, id_hits = await _tables_containing(pool, [ids[0]])
    finally:
        await pool.close()
    assert searched >= 15, "the search must cover every service's schema"
    assert {"usage.request_log", "usage.processed_events"} <= set(id_hits)
    assert any(h.startswith("billing.") for h in id_hits)
    assert hits == []
    # Control: the marker did travel through the gateway to the upstream (the mock keeps what it received).
    async with httpx.AsyncClient(timeout=5) as http:
        seen_upstream = (await http.get(stack["mock-upstream"].url + "/_mock/stats")).text
    assert seen_upstream.count(marker) >= 2

    messages = await _stream_messages(common)
    assert sum(1 for m in messages if ids[0].encode() in m) >= 2  # usage.recorded and usage.charged were read
    assert [m[:200] for m in messages if any(n.encode() in m for n in needles)] == []

    values = await _redis_values(common)
    assert values, "Redis holds the key and wallet state of this stack"
    assert [v[:200] for v in values if any(n.encode() in v for n in needles)] == []

    for name, sp in stack.items():
        if name == "mock-upstream":
            continue
        text = sp.log()
        assert text.strip(), f"{name} wrote no log at all"
        leaked = [line[:300] for line in text.splitlines() if any(n in line for n in needles)]
        assert leaked == [], f"{name} logged content"
