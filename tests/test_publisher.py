"""The background publisher against real JetStream: every `publish_nowait`-ed event ends in the stream exactly once
or in the disk spool, through NATS outages, a subject no stream listens on, and a shutdown with acks in flight."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from shared import bus
from shared import events as ev
from shared.config import CommonSettings
from tests import procs

NATS_SERVER = Path(sys.executable).with_name("nats-server")


def usage_events(n: int) -> list[ev.UsageRecorded]:
    return [ev.UsageRecorded(request_id=f"req-{i}", account_id="acct", key_id="key", model="gpt-4o-mini",
                             prompt_tokens=10 + i % 7, completion_tokens=20) for i in range(n)]


async def stream_msg_ids(js: JetStreamContext, namespace: str) -> list[str]:
    """Nats-Msg-Id of every message in the namespace's usage stream, in stream order (duplicates included)."""
    sub = await js.subscribe(bus.subject(namespace, "usage.recorded"), ordered_consumer=True)
    ids = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except Exception:
                break
            ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))
    finally:
        await sub.unsubscribe()
    return ids


def spooled_ids(spool_dir: Path) -> set[str]:
    """Event ids in the spool files. A set: mid-replay an event may sit in two files, and replay dedups it."""
    out = set()
    for path in spool_dir.glob("*.jsonl"):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # claimed for a replay (renamed) since the glob; the caller looks again
            continue
        for line in raw.split(b"\n")[:-1]:  # whole lines only: the publisher may be mid-append
            if line.strip():
                out.add(msgspec.json.decode(line)["h"]["Nats-Msg-Id"])
    return out


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def failures(etype: str) -> float:
    return REGISTRY.get_sample_value("faregate_event_publish_failures_total", {"type": etype}) or 0.0


class PrivateNats:
    """A nats-server of this test's own, stopped, paused and started again on the same port and store."""

    def __init__(self) -> None:
        self.port = procs.free_port()
        self.store = tempfile.mkdtemp(prefix="fg-pub-nats-")
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [str(NATS_SERVER), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.store]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it paused
            self.proc.kill()
            self.proc.wait(10)

    def pause(self, paused: bool) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP if paused else signal.SIGCONT)


@pytest.fixture
def private_nats() -> Iterator[PrivateNats]:
    server = PrivateNats()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.store, ignore_errors=True)


@contextlib.asynccontextmanager
async def namespace_on(url: str, *, streams: bool = True) -> AsyncIterator[tuple[NATS, JetStreamContext, str]]:
    """A connection and a namespace of this test's own; its streams are deleted at the end."""
    ns = f"pub{ev.new_id()[:8]}"
    nc = await bus.connect(url, name="publisher-test")
    js = nc.jetstream()
    if streams:
        await bus.ensure_streams(js, ns)
    try:
        yield nc, js, ns
    finally:
        for spec in bus.STREAMS:
            with contextlib.suppress(Exception):
                await js.delete_stream(bus.stream_name(ns, spec))
        await nc.close()


async def test_ten_thousand_nowait_events_reach_the_stream_exactly_once(common: CommonSettings,
                                                                       tmp_path: Path) -> None:
    async with namespace_on(common.nats_url) as (_, js, ns):
        pub = bus.Publisher(js, ns, tmp_path)
        pub.start()
        try:
            evs = usage_events(10_000)
            cpu0 = time.process_time()
            for i, e in enumerate(evs):
                pub.publish_nowait(e)
                if i % 50 == 49:
                    await asyncio.sleep(0)  # requests arrive spread over loop turns, not all at once
            await pub.flush(30)
            cpu = time.process_time() - cpu0
            print(f"\npublish_nowait: {1e6 * cpu / len(evs):.1f} µs CPU per event (whole process, to the ack)")
            assert pub.spool_count() == 0
        finally:
            await pub.close()
        ids = await stream_msg_ids(js, ns)
        assert len(ids) == 10_000
        assert sorted(ids) == sorted(e.event_id for e in evs)


async def test_events_during_a_nats_outage_are_spooled_then_delivered_once(private_nats: PrivateNats,
                                                                          tmp_path: Path) -> None:
    async with namespace_on(private_nats.url) as (nc, js, ns):
        pub = bus.Publisher(js, ns, tmp_path)
        pub.start()
        try:
            evs = usage_events(300)
            before, during = evs[:100], evs[100:]
            for e in before:
                pub.publish_nowait(e)
            await pub.flush(10)

            private_nats.stop()
            for e in during:  # the first few may go out before the client notices: the ack sweep spools them
                pub.publish_nowait(e)
                await asyncio.sleep(0.001)

            async def all_spooled() -> bool:
                return spooled_ids(tmp_path) == {e.event_id for e in during}

            await eventually(all_spooled, 10)

            private_nats.start()

            async def spool_drained() -> bool:
                return nc.is_connected and pub.spool_count() == 0

            await eventually(spool_drained, 20)
            await pub.flush(10)
        finally:
            await pub.close()
        ids = await stream_msg_ids(js, ns)
        assert sorted(ids) == sorted(e.event_id for e in before + during)  # nothing lost, nothing twice


async def test_a_subject_no_stream_listens_on_is_spooled_not_lost(common: CommonSettings, tmp_path: Path) -> None:
    async with namespace_on(common.nats_url, streams=False) as (_, js, ns):
        # A long ack wait: only the "no responders" status NATS sends back can spool these within the flush.
        pub = bus.Publisher(js, ns, tmp_path, ack_wait_s=60)
        pub.start()
        failed_before = failures("usage.recorded")
        evs = usage_events(200)
        try:
            for e in evs:
                pub.publish_nowait(e)
            await pub.flush(10)
            assert spooled_ids(tmp_path) == {e.event_id for e in evs}
            assert failures("usage.recorded") - failed_before == 200
        finally:
            await pub.close()
        assert spooled_ids(tmp_path) == {e.event_id for e in evs}


async def test_close_with_acks_in_flight_loses_nothing(private_nats: PrivateNats, tmp_path: Path) -> None:
    async with namespace_on(private_nats.url) as (_, js, ns):
        pub = bus.Publisher(js, ns, tmp_path, ack_wait_s=60)
        pub.start()
        evs = usage_events(500)
        private_nats.pause(True)  # the server holds the connection but answers nothing: every ack stays pending
        try:
            for e in evs:
                pub.publish_nowait(e)
            await asyncio.sleep(0.2)
            assert pub._in_flight  # the publishes went out and wait for acks
        finally:
            await pub.close(wait_s=0.5)
        assert spooled_ids(tmp_path) == {e.event_id for e in evs}

        # The server wakes up and may store what it had received; the replay adds only what it had not.
        private_nats.pause(False)
        replay = bus.Publisher(js, ns, tmp_path)
        assert await replay.drain_spool() == 500
        assert replay.spool_count() == 0
        ids = await stream_msg_ids(js, ns)
        assert sorted(ids) == sorted(e.event_id for e in evs)


async def test_a_connection_that_takes_no_writes_spools_within_the_ack_wait(private_nats: PrivateNats,
                                                                           tmp_path: Path) -> None:
    """Enough events to fill the socket and nats-py's write buffer of a paused server: the sender then waits inside
    a publish, and what queues behind it is spooled by the sweep instead of held in memory; close() still returns."""
    async with namespace_on(private_nats.url) as (_, js, ns):
        pub = bus.Publisher(js, ns, tmp_path, max_in_flight=100_000)
        pub.start()
        evs = usage_events(30_000)
        private_nats.pause(True)
        try:
            for i, e in enumerate(evs):
                pub.publish_nowait(e)
                if i % 100 == 99:
                    await asyncio.sleep(0)

            async def all_spooled() -> bool:
                return spooled_ids(tmp_path) == {e.event_id for e in evs}

            await eventually(all_spooled, 10)
        finally:
            started = time.monotonic()
            await pub.close(wait_s=0.5)
            assert time.monotonic() - started < 5
            private_nats.pause(False)
        assert spooled_ids(tmp_path) == {e.event_id for e in evs}
