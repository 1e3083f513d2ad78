"""One measurement each: a wrk load run, a run of timed streams, a run of paced streams, a memory soak.

Every function measures one target once; `bench.run` repeats and interleaves them and the report takes
medians."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import fixtures, stats, wrk
from bench.httpclient import Connection, ProtocolError
from bench.system import Cores, children_of
from bench.targets import Target

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process tree, live processes only."""
    total = 0
    for p in [pid, *children_of(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


class _MemorySampler:
    """Peak RSS of the target while a load runs (sampled every 250 ms in a thread)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            sample = self.target.memory()
            for k, v in sample.items():
                self.peak[k] = max(self.peak.get(k, 0.0), v)

    def __enter__(self) -> _MemorySampler:
        if self.target.process is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def load(target: Target, which: str, connections: int, seconds: float, cores: Cores) -> dict[str, Any]:
    """wrk at a fixed number of connections: req/s, latency percentiles, errors, the SUT's CPU and peak RSS.
    """
    endpoint = getattr(target, which)
    pid = target.process.pid if target.process else None
    before = cpu_seconds(pid) if pid else 0.0
    with _MemorySampler(target) as mem:
        res = wrk.run(endpoint.url, target.body(which), api_key=target.api_key, connections=connections,
                      seconds=seconds, cores=cores)
    out: dict[str, Any] = res.to_dict()
    if pid:
        used = cpu_seconds(pid) - before
        out["sut_cpu"] = round(used / res.seconds, 3) if res.seconds else 0.0
        # What one fully busy core would carry at this cost per request (useful when the load side, not the
        # system under test, was the limit).
        out["rps_per_core"] = round(res.rps / out["sut_cpu"], 1) if out["sut_cpu"] > 0.05 else None
        # CPU the system under test spent per answered request: unlike req/s, unaffected by how much of its
        # core other processes on a shared machine took.
        out["cpu_us_per_req"] = round(1e6 * used / res.requests, 1) if res.requests else None
        out["rss_peak"] = mem.peak
    return out


@dataclass
class StreamRun:
    ttfb_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    offsets_ms: list[list[float]] = field(default_factory=list)
    errors: int = 0
    error_sample: str = ""


async def _streams(target: Target, which: str, *, seconds: float, count: int | None) -> StreamRun:
    endpoint = getattr(target, which)
    body = target.body(which)
    headers = target.headers()
    run = StreamRun()
    conn = Connection("127.0.0.1", endpoint.port)
    deadline = time.monotonic() + seconds
    done = 0
    try:
        while time.monotonic() < deadline and (count is None or done < count):
            done += 1
            try:
                resp = await conn.post(endpoint.path, body, headers)
            except (ProtocolError, OSError) as exc:
                run.errors += 1
                run.error_sample = run.error_sample or repr(exc)
                await conn.close()
                continue
            # A complete stream: the 20 upstream chunks and [DONE], every byte forwarded.
            if resp.status != 200 or len(resp.event_times) < fixtures.STREAM_CHUNKS + 1 \
                    or b"[DONE]" not in resp.body:
                run.errors += 1
                run.error_sample = run.error_sample or (
                    f"HTTP {resp.status}, {len(resp.event_times)} events: {resp.body[:200]!r}")
                continue
            run.ttfb_ms.append(resp.ttfb_ms)
            run.total_ms.append(resp.total_ms)
            run.offsets_ms.append(resp.event_offsets_ms())
    finally:
        await conn.close()
    return run


def stream_timing(target: Target, seconds: float) -> dict[str, Any]:
    """Back-to-back streams on one connection: time to first chunk and full-stream time, p50/p99."""
    run = asyncio.run(_streams(target, "stream", seconds=seconds, count=None))
    out: dict[str, Any] = {"streams": len(run.ttfb_ms), "errors": run.errors}
    if run.error_sample:
        out["error_sample"] = run.error_sample
    if run.ttfb_ms:
        out.update({
            "ttfb_p50_ms": round(stats.percentile(run.ttfb_ms, 50), 3),
            "ttfb_p99_ms": round(stats.percentile(run.ttfb_ms, 99), 3),
            "total_p50_ms": round(stats.percentile(run.total_ms, 50), 3),
            "total_p99_ms": round(stats.percentile(run.total_ms, 99), 3),
        })
    return out


def paced(target: Target, trials: int, interval_ms: float) -> dict[str, Any]:
    """Streams whose upstream chunks are `interval_ms` apart: each chunk's arrival offset, and how many chunks
    arrived glued to the next one (gap under half the interval), i.e. were held back."""
    budget_s = trials * interval_ms * 25 / 1000 + 10
    run = asyncio.run(_streams(target, "paced", seconds=budget_s, count=trials))
    held = []
    for offsets in run.offsets_ms:
        gaps = [b - a for a, b in itertools.pairwise(offsets)]
        held.append(sum(1 for g in gaps if g < interval_ms / 2))
    out: dict[str, Any] = {"trials": len(run.offsets_ms), "errors": run.errors,
                           "held_back_max": max(held, default=0),
                           "offsets_ms": [[round(x, 2) for x in o] for o in run.offsets_ms]}
    if run.error_sample:
        out["error_sample"] = run.error_sample
    return out


def soak(target: Target, which: str, connections: int, seconds: float, cores: Cores,
         every_s: float = 10.0) -> dict[str, Any]:
    """A long wrk run with RSS sampled along the way: does the gateway's memory stay flat?"""
    samples: list[tuple[float, dict[str, float]]] = []
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not stop.wait(every_s):
            samples.append((round(time.monotonic() - started, 1), target.memory()))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        res = load(target, which, connections, seconds, cores)
    finally:
        stop.set()
        thread.join()
    # Growth is measured from the first sample taken once the load is running (start-up allocations excluded).
    out: dict[str, Any] = {"load": res, "samples": [{"t_s": t, **m} for t, m in samples]}
    if len(samples) >= 2:
        first, last = samples[0][1], samples[-1][1]
        out["worker_first_mb"] = first.get("worker_max_mb", 0.0)
        out["worker_last_mb"] = last.get("worker_max_mb", 0.0)
        out["worker_max_mb"] = max(m.get("worker_max_mb", 0.0) for _, m in samples)
        first_mb = out["worker_first_mb"]
        growth = 100 * (out["worker_last_mb"] - first_mb) / first_mb if first_mb else None
        out["growth_pct"] = None if growth is None else round(growth, 2)
    return out
