"""shared/resp.py, the gateway's pipelined Redis client, against real redis-server processes: the shared one for
everyday commands (keys under a prefix unique to this run, deleted at the end) and private ones, really killed
and restarted, for passwords, SCRIPT FLUSH and outages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import uvloop

from shared.resp import Resp, RespConnectionError, RespError, RespTimeout, parse_url
from tests import procs

REDIS_URL = os.environ.get("FAREGATE_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = f"tresp{secrets.token_hex(4)}:"


class PrivateRedis:
    """A redis-server of our own that we can kill and start again on the same port."""

    def __init__(self, *extra: str) -> None:
        self.port = procs.free_port()
        self.argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Coroutine[Any, Any, None]], None]]:
    """Each scenario on a fresh loop of both kinds: the gateway's workers run uvloop, whose transports are not
    asyncio's (asyncio.Runner rather than pytest-asyncio, whose loop-policy override is deprecated)."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner.run


@contextlib.asynccontextmanager
async def shared_client() -> AsyncIterator[Resp]:
    """A client of the shared Redis; this run's keys are deleted afterwards."""
    resp = Resp.from_url(REDIS_URL)
    try:
        yield resp
    finally:
        await resp.aclose()
        plain = aioredis.Redis.from_url(REDIS_URL)
        keys = [k async for k in plain.scan_iter(match=f"{PREFIX}*", count=1000)]
        if keys:
            await plain.delete(*keys)
        await plain.aclose()


def key(name: str) -> str:
    return PREFIX + name


Run = Callable[[Coroutine[Any, Any, None]], None]


def test_everyday_commands_round_trip(run: Run) -> None:
    async def scenario() -> None:
        async with shared_client() as client:
            assert await client.execute("SET", key("greeting"), "héllo") == b"OK"
            assert await client.execute(b"GET", key("greeting")) == "héllo".encode()
            assert await client.execute("GET", key("missing")) is None
            assert await client.execute("INCR", key("n")) == 1
            assert await client.execute("INCRBY", key("n"), 41) == 42
            assert await client.execute("HSET", key("h"), "a", 1, "b", b"\x00\xff") == 2
            assert await client.execute("HGETALL", key("h")) == [b"a", b"1", b"b", b"\x00\xff"]
            nested = await client.execute("EVAL", "return {1, {2, 'x', {}}, 'y'}", 0)
            assert nested == [1, [2, b"x", []], b"y"]
            assert await client.execute("DEL", key("greeting"), key("n"), key("h")) == 3
            assert await client.execute("EXISTS", key("greeting")) == 0

    run(scenario())


def test_an_error_reply_raises_and_the_connection_carries_on(run: Run) -> None:
    async def scenario() -> None:
        async with shared_client() as client:
            await client.execute("SET", key("word"), "not-a-number")
            with pytest.raises(RespError, match="not an integer"):
                await client.execute("INCR", key("word"))
            with pytest.raises(RespError, match="unknown command"):
                await client.execute("NOSUCHCOMMAND")
            assert await client.execute("PING") == b"PONG"
            assert await client.execute("GET", key("word")) == b"not-a-number"

    run(scenario())


def test_five_thousand_concurrent_calls_each_get_their_own_reply(run: Run) -> None:
    async def scenario() -> None:
        n = 5000
        async with shared_client() as client:
            echoes = [client.execute("ECHO", f"value-{i}") for i in range(n)]
            counters = [client.execute("INCRBY", key(f"c{i}"), i) for i in range(n)]
            replies = await asyncio.gather(*echoes, *counters)
            assert replies[:n] == [f"value-{i}".encode() for i in range(n)]
            assert replies[n:] == list(range(n))

    run(scenario())


def test_a_cancelled_call_does_not_misalign_later_replies(run: Run) -> None:
    async def scenario() -> None:
        async with shared_client() as client:
            blocker = asyncio.create_task(client.execute("BLPOP", key("empty"), "0.3"))  # holds the line ~0.3 s
            victim = asyncio.create_task(client.execute("ECHO", "victim"))
            await asyncio.sleep(0.05)  # both are on the wire
            victim.cancel()
            after = await asyncio.gather(*(client.execute("ECHO", f"after-{i}") for i in range(10)))
            assert after == [f"after-{i}".encode() for i in range(10)]
            assert await blocker is None
            assert victim.cancelled()

    run(scenario())


def test_a_call_cancelled_while_connecting_does_not_stop_the_others(run: Run) -> None:
    async def scenario() -> None:
        async with shared_client() as client:
            first = asyncio.create_task(client.execute("ECHO", "first"))
            second = asyncio.create_task(client.execute("ECHO", "second"))
            await asyncio.sleep(0)  # both are waiting for the one connect attempt
            first.cancel()
            assert await second == b"second"
            assert first.cancelled()

    run(scenario())


def test_scripts_run_by_sha_and_survive_a_script_flush(run: Run, private_redis: PrivateRedis) -> None:
    async def scenario() -> None:
        client = Resp.from_url(f"redis://127.0.0.1:{private_redis.port}")
        plain = aioredis.Redis(port=private_redis.port)
        try:
            script = client.script("redis.call('SET', KEYS[1], ARGV[1]); return {KEYS[1], tonumber(ARGV[2]) + 1}")
            assert await script(keys=["s:1"], args=["one", 1]) == [b"s:1", 2]  # NOSCRIPT first: never loaded
            assert await plain.script_exists(script.sha) == [True]
            assert await script(keys=["s:2"], args=["two", 2]) == [b"s:2", 3]  # plain EVALSHA
            await plain.script_flush()
            assert await script(keys=["s:3"], args=["three", 3]) == [b"s:3", 4]
            assert await plain.mget("s:1", "s:2", "s:3") == [b"one", b"two", b"three"]
            failing = client.script("return redis.error_reply('BUDGET exceeded')")
            with pytest.raises(RespError, match="BUDGET exceeded"):
                await failing()
        finally:
            await client.aclose()
            await plain.aclose()

    run(scenario())


def test_password_and_database_from_the_url(run: Run) -> None:
    server = PrivateRedis("--requirepass", "s3cr:t/x")
    server.start()

    async def scenario() -> None:
        client = Resp.from_url(f"redis://:s3cr%3At%2Fx@127.0.0.1:{server.port}/3")
        assert await client.execute("SET", "in-db-3", "yes") == b"OK"
        await client.aclose()
        for db, seen in ((3, b"yes"), (0, None)):
            plain = aioredis.Redis(port=server.port, password="s3cr:t/x", db=db)
            assert await plain.get("in-db-3") == seen
            await plain.aclose()

        with_user = Resp.from_url(f"redis://default:s3cr%3At%2Fx@127.0.0.1:{server.port}/3")
        assert await with_user.execute("GET", "in-db-3") == b"yes"
        await with_user.aclose()

        wrong = Resp.from_url(f"redis://:nope@127.0.0.1:{server.port}/3")
        with pytest.raises(RespConnectionError, match=r"WRONGPASS|invalid"):
            await wrong.execute("GET", "in-db-3")
        await wrong.aclose()

    try:
        run(scenario())
    finally:
        server.kill()


def test_url_forms() -> None:
    assert parse_url("redis://localhost") == parse_url("redis://localhost:6379/0")
    tls = parse_url("rediss://bob:p%40ss@cache.internal:6380/2")
    assert (tls.tls, tls.host, tls.port, tls.username, tls.password, tls.db) == (
        True, "cache.internal", 6380, "bob", "p@ss", 2
    )
    assert parse_url("redis://:only@h").username is None
    assert parse_url("redis://:only@h").password == "only"
    for bad in ("unix:///tmp/redis.sock", "http://127.0.0.1:6379", "redis://h/zero"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_redis_killed_and_restarted(run: Run, private_redis: PrivateRedis) -> None:
    async def scenario() -> None:
        client = Resp.from_url(f"redis://127.0.0.1:{private_redis.port}", command_timeout_s=30)
        try:
            assert await client.execute("SET", "k", "v") == b"OK"
            # A blocked command at the head of the pipeline holds everything behind it on the wire.
            pending = [asyncio.create_task(client.execute("BLPOP", "nothing", 0))]
            pending += [asyncio.create_task(client.execute("ECHO", f"e{i}")) for i in range(20)]
            await asyncio.sleep(0.05)
            killed_at = time.monotonic()
            private_redis.kill()
            outcomes = await asyncio.gather(*pending, return_exceptions=True)
            assert time.monotonic() - killed_at < 0.5
            assert all(isinstance(o, RespConnectionError) and not isinstance(o, RespTimeout) for o in outcomes)

            started = time.monotonic()
            with pytest.raises(RespConnectionError):
                await client.execute("GET", "k")
            assert time.monotonic() - started < 0.5
            # Many callers while it is down share one connect attempt and its failure.
            down = await asyncio.gather(*(client.execute("GET", "k") for _ in range(50)), return_exceptions=True)
            assert all(isinstance(o, RespConnectionError) for o in down)
            assert len({id(o) for o in down}) == 1

            private_redis.start()  # same port, empty data (no persistence)
            assert await client.execute("GET", "k") is None
            assert await client.execute("SET", "k", "back") == b"OK"
            assert await client.execute("GET", "k") == b"back"
        finally:
            await client.aclose()

    run(scenario())


def test_a_stalled_command_times_out_and_the_next_call_reconnects(run: Run) -> None:
    async def scenario() -> None:
        async with shared_client():  # for the cleanup of this run's keys
            stalling = Resp.from_url(REDIS_URL, command_timeout_s=0.2)
            try:
                before = await stalling.execute("CLIENT", "ID")
                started = time.monotonic()
                with pytest.raises(RespTimeout):
                    await stalling.execute("BLPOP", key("never"), 0)
                assert 0.18 <= time.monotonic() - started < 0.6
                assert await stalling.execute("ECHO", "alive") == b"alive"
                assert await stalling.execute("CLIENT", "ID") != before  # a new connection
            finally:
                await stalling.aclose()

    run(scenario())


def test_connect_timeout_when_the_server_never_answers(run: Run) -> None:
    async def scenario() -> None:
        # A socket that listens but is never read: TCP connects (the kernel accepts), AUTH is never answered.
        with socket.socket() as mute:
            mute.bind(("127.0.0.1", 0))
            mute.listen(8)
            port = mute.getsockname()[1]
            client = Resp.from_url(f"redis://:pw@127.0.0.1:{port}", connect_timeout_s=0.2)
            started = time.monotonic()
            with pytest.raises(RespConnectionError, match="no answer"):
                await client.execute("PING")
            assert time.monotonic() - started < 0.6
            await client.aclose()

    run(scenario())


def test_aclose_fails_pending_calls_and_later_ones(run: Run) -> None:
    async def scenario() -> None:
        async with shared_client() as client:
            blocked = asyncio.create_task(client.execute("BLPOP", key("never"), 0))
            await asyncio.sleep(0.05)
            await client.aclose()
            with pytest.raises(RespConnectionError):
                await blocked
            with pytest.raises(RespConnectionError, match="closed"):
                await client.execute("PING")

    run(scenario())


def test_send_queues_at_once_and_keeps_the_order_of_sending(run: Run) -> None:
    async def scenario() -> None:
        async with shared_client() as client:
            with pytest.raises(RespConnectionError):
                client.send(b"PING")  # nothing connected yet: `execute` connects
            assert await client.execute(b"PING") == b"PONG"
            counter = key("order")
            # Sent first, from outside any await: it runs before the later `execute`, whatever task awaits it.
            first = client.send(b"SET", counter, 10)
            assert await client.execute(b"INCR", counter) == 11
            assert await first == b"OK"
            script = client.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
            sent = script.send([counter], [5])  # never loaded: NOSCRIPT, then run by EVAL when awaited
            assert await script.reply(sent, [counter], [5]) == 16
            assert await script.reply(script.send([counter], [1]), [counter], [1]) == 17

    run(scenario())


def test_send_now_writes_at_once_on_an_idle_connection_and_batches_otherwise(run: Run) -> None:
    async def scenario() -> None:
        async with shared_client() as client:
            assert await client.execute(b"PING") == b"PONG"
            conn = client._conn
            assert conn is not None
            alone = client.send(b"PING", now=True)  # nothing in flight: on the wire before this returns
            assert not conn._outgoing
            behind = client.send(b"ECHO", b"x", now=True)  # one is unanswered: waits for the loop's write
            later = client.send(b"ECHO", b"y")
            assert len(conn._outgoing) == 2
            assert [await alone, await behind, await later] == [b"PONG", b"x", b"y"]

    run(scenario())
