"""The foundation: configuration, the event contract, the bus (publish, de-dup, spool) and migrations."""

from __future__ import annotations

import ast
import asyncio
import time
from pathlib import Path

import msgspec
import pytest

from shared import bus, config, events
from shared.config import CommonSettings, ConfigError
from shared.runtime import Resources

ROOT = Path(__file__).resolve().parent.parent


def test_unknown_setting_fails_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="FAREGATE_DATABSE_URL"):
        config.load(CommonSettings, {"FAREGATE_DATABSE_URL": "postgresql://x"})


def test_invalid_common_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="FAREGATE_LOG_FORMAT"):
        config.load(CommonSettings, {"FAREGATE_LOG_FORMAT": "xml"})


def test_malformed_setting_fails_naming_the_variable() -> None:
    from services.gateway.config import GatewaySettings

    with pytest.raises(ConfigError, match="FAREGATE_GATEWAY_PORT"):
        config.load(GatewaySettings, {"FAREGATE_GATEWAY_PORT": "eighty"})


def test_defaults_point_at_local_standard_ports() -> None:
    s = config.load(CommonSettings, {})
    assert "127.0.0.1:5432" in s.database_url
    assert s.redis_url.startswith("redis://127.0.0.1:6379")
    assert s.nats_url == "nats://127.0.0.1:4222"


def test_event_roundtrip_and_unknown_tag_rejected() -> None:
    e = events.UsageRecorded(request_id="r1", account_id="a", key_id="k", model="m", prompt_tokens=3)
    back = events.decode(events.encode(e))
    assert back == e
    with pytest.raises(msgspec.ValidationError):
        events.decode(b'{"type": "no.such.event", "event_id": "x"}')


def test_services_never_import_each_other_and_shared_imports_no_service() -> None:
    offenders = []
    for path in [*ROOT.glob("services/*/**/*.py"), *ROOT.glob("shared/**/*.py")]:
        rel = path.relative_to(ROOT)
        owner = rel.parts[1] if rel.parts[0] == "services" else None
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                if parts[0] == "services" and len(parts) > 1 and parts[1] != owner:
                    offenders.append(f"{rel} imports {name}")
                if parts[0] == "faregate":
                    offenders.append(f"{rel} imports {name}")
    assert offenders == []


async def test_publish_is_deduplicated_by_event_id(resources: Resources) -> None:
    assert resources.publisher and resources.js
    e = events.CatalogChanged(version=1)
    first = await resources.js.publish(
        f"{resources.common.namespace}.catalog.changed", events.encode(e), headers={"Nats-Msg-Id": e.event_id}
    )
    await resources.publisher.publish(e)
    again = await resources.js.publish(
        f"{resources.common.namespace}.catalog.changed", events.encode(e), headers={"Nats-Msg-Id": e.event_id}
    )
    assert not first.duplicate and again.duplicate
    assert again.seq == first.seq  # the stream kept one copy


async def test_spooled_events_are_published_once_when_nats_returns(
    resources: Resources, tmp_path: Path
) -> None:
    """Events that could not be published wait on disk; draining the spool delivers each exactly once."""
    assert resources.js
    pub = bus.Publisher(resources.js, resources.common.namespace, tmp_path)
    e1, e2 = events.CatalogChanged(version=2), events.CatalogChanged(version=3)
    # As if NATS had been down: both went to the spool (e1 also made it to the stream before the failure).
    await pub._spool("catalog.changed", events.encode(e1), {"Nats-Msg-Id": e1.event_id})
    await pub._spool("catalog.changed", events.encode(e2), {"Nats-Msg-Id": e2.event_id})
    await pub.publish(e1)
    assert pub.spool_count() == 2
    # A worker that died left its own spool file behind: a live worker claims and replays it too.
    e3 = events.CatalogChanged(version=4)
    line = msgspec.json.encode({"t": "catalog.changed", "h": {"Nats-Msg-Id": e3.event_id},
                                "d": events.encode(e3).decode()})
    (tmp_path / "pending-999999999.jsonl").write_bytes(line + b"\n")
    assert pub.spool_count() == 3
    assert await pub.drain_spool() == 3
    assert pub.spool_count() == 0
    sub = await resources.js.subscribe(
        f"{resources.common.namespace}.catalog.changed",
        deliver_policy=bus.DeliverPolicy.ALL,
        ordered_consumer=True,
    )
    seen = []
    while True:
        try:
            msg = await sub.next_msg(timeout=1)
        except Exception:
            break
        seen.append(events.decode(msg.data).event_id)
    await sub.unsubscribe()
    mine = [i for i in seen if i in (e1.event_id, e2.event_id, e3.event_id)]
    assert sorted(mine) == sorted([e1.event_id, e2.event_id, e3.event_id])


async def test_consumer_terminates_malformed_and_acks_after_handler(resources: Resources) -> None:
    assert resources.js and resources.publisher
    ns = resources.common.namespace
    # A subject of its own, so events other tests publish in this session don't reach this consumer.
    spec = bus.ConsumerSpec(durable="tests-probe", stream="OPS", filter_subjects=("channel.probe_test",))
    handled: list[str] = []

    async def handle(batch):  # type: ignore[no-untyped-def]
        handled.extend(e.event_id for _, e in batch)

    await resources.js.publish(f"{ns}.channel.probe_test", b"{not json")
    good = events.ChannelStateChanged(channel_id="c1", state="open")
    await resources.js.publish(f"{ns}.channel.probe_test", events.encode(good))
    stop = asyncio.Event()
    task = asyncio.create_task(bus.run_consumer(resources.js, ns, spec, handle, stop))
    for _ in range(50):
        if handled:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await task
    assert handled == [good.event_id]
    # Declared again by a release with other settings: it keeps the existing consumer instead of crashing.
    await bus.ensure_consumer(
        resources.js,
        ns,
        bus.ConsumerSpec(
            durable="tests-probe", stream="OPS", filter_subjects=("channel.probe_test",), ack_wait_s=99
        ),
    )
    info = await resources.js.consumer_info(bus.stream_name(ns, bus.STREAMS[3]), "tests-probe")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_two_consumers_on_one_durable_handle_a_trickle_of_events_at_once(resources: Resources) -> None:
    """Billing runs two consumers on one durable (and replicas share theirs). With nats-py's fetch(batch), an
    event arriving at a trickle could wait out one consumer's open fetch (up to its 1 s timeout) before it was
    handled; it happened in about half the runs of a second of events after the consumers started, so the test
    starts them six times (against the old fetch it failed 2 runs in 4 with four starts)."""
    assert resources.js
    ns = resources.common.namespace
    spec = bus.ConsumerSpec(durable="tests-trickle", stream="OPS", filter_subjects=("channel.probe_test",),
                            batch=100)
    handled_at: dict[str, float] = {}
    sent_at: dict[str, float] = {}

    async def handle(batch):  # type: ignore[no-untyped-def]
        now = time.monotonic()
        for _, e in batch:
            handled_at.setdefault(e.event_id, now)
        await asyncio.sleep(0.015)  # a batch's transaction: the next fetch, made ahead, is open meanwhile

    for round_ in range(6):
        stop = asyncio.Event()
        tasks = [asyncio.create_task(bus.run_consumer(resources.js, ns, spec, handle, stop)) for _ in range(2)]
        for i in range(40):  # 50 a second
            e = events.ChannelStateChanged(channel_id=f"trickle-{round_}-{i}", state="open")
            sent_at[e.event_id] = time.monotonic()
            await resources.js.publish(f"{ns}.channel.probe_test", events.encode(e))
            await asyncio.sleep(0.02)
        for _ in range(100):
            if set(sent_at) <= set(handled_at):
                break
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)
    assert set(sent_at) <= set(handled_at)
    lags = sorted(handled_at[i] - t for i, t in sent_at.items())
    assert lags[-1] < 0.3, [round(x, 3) for x in lags[-10:]]


async def test_a_consumer_fetches_the_next_batch_ahead_and_gives_it_back_when_stopped(resources: Resources) -> None:
    assert resources.js
    ns = resources.common.namespace
    # Redelivery after the ack wait would take 30 s: the test sees the batch fetched ahead come back at once.
    spec = bus.ConsumerSpec(durable="tests-ahead", stream="OPS", filter_subjects=("channel.probe_test",),
                            ack_wait_s=30, batch=2)
    mine = [events.ChannelStateChanged(channel_id=f"ahead-{i}", state="open") for i in range(6)]
    for e in mine:
        await resources.js.publish(f"{ns}.channel.probe_test", events.encode(e))
    handled: list[str] = []
    stop = asyncio.Event()

    async def slow_first(batch):  # type: ignore[no-untyped-def]
        handled.extend(e.event_id for _, e in batch)
        await asyncio.sleep(0.5)  # the next batch is fetched meanwhile
        stop.set()

    await asyncio.wait_for(bus.run_consumer(resources.js, ns, spec, slow_first, stop), 10)
    first = len([i for i in handled if i in {e.event_id for e in mine}])
    assert first < len(mine)

    async def handle(batch):  # type: ignore[no-untyped-def]
        handled.extend(e.event_id for _, e in batch)

    stop = asyncio.Event()
    task = asyncio.create_task(bus.run_consumer(resources.js, ns, spec, handle, stop))
    for _ in range(50):
        if {e.event_id for e in mine} <= set(handled):
            break
        await asyncio.sleep(0.1)
    stop.set()
    await task
    assert {e.event_id for e in mine} <= set(handled)
    assert len([i for i in handled if i in {e.event_id for e in mine}]) == len(mine)  # each handled once
