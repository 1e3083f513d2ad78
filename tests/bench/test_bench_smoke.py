"""The bench harness kept from rotting: its pieces, and a few-seconds-per-target run of the whole thing.

The smoke run (`python -m bench.run --smoke`) brings up the nginx upstream and hop (installing nginx and wrk
from Debian's packages if missing) and, when the gateway exists, Faregate's gateway on private Redis and NATS;
it leaves out LiteLLM (a 45-second install of its own) and the billing/usage scripts. The numbers it prints
mean nothing at one second per run; what is checked is that every target answered every scenario without
errors and the report carries the issue's targets."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import fixtures, report, stats
from bench.httpclient import Connection
from bench.system import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


def test_percentiles_interpolate_like_numpy() -> None:
    values = [10.0, 1.0, 4.0, 3.0, 2.0]
    assert stats.percentile(values, 50) == 3.0
    assert stats.percentile(values, 0) == 1.0
    assert stats.percentile(values, 100) == 10.0
    assert stats.percentile(values, 90) == pytest.approx(7.6)
    assert stats.spread_pct([90.0, 100.0, 110.0]) == 20.0


def test_goal_verdicts_say_how_far_off() -> None:
    fast = report.Goal("x", ">= 30", 45.0, "x", at_least=30)
    slow = report.Goal("x", ">= 30", 3.0, "x", at_least=30)
    tight = report.Goal("x", "< 0.5 ms", 1.5, "ms", at_most=0.5)
    absent = report.Goal("x", "< 0.5 ms", None, "ms", at_most=0.5, note="peer not run")
    assert fast.verdict()[0] == "met"
    assert slow.verdict() == ("**missed**", "at 10% of the target (10.0× short)")
    assert tight.verdict() == ("**missed**", "3.0× the limit")
    assert absent.verdict() == ("not measured", "peer not run")


def test_report_ratios_and_held_back_chunks_from_raw_runs() -> None:
    """A relay that forwards chunks as they come passes even with one stream hiccup; one that holds every
    other chunk back fails; peak req/s and added latency come from the medians of the repeats."""
    steady = [20.0 * i for i in range(21)]
    hiccup = [*steady[:5], steady[6], *steady[6:]]  # one read delayed: chunk 5 arrived with chunk 6
    pairs = [20.0 * (i + i % 2) for i in range(21)]  # every odd chunk waits for the next one
    res = {
        "context": {"upstream": {"paced_interval_ms": 20.0}},
        "scenarios": {
            "paced": {"direct": [{"trials": 3, "offsets_ms": [steady, steady, steady]}],
                      "good": [{"trials": 3, "offsets_ms": [steady, hiccup, steady]}],
                      "bad": [{"trials": 3, "offsets_ms": [pairs, pairs, pairs]}]},
            "chat_c1": {"direct": [{"p50_ms": 0.1}, {"p50_ms": 0.3}, {"p50_ms": 0.2}],
                        "good": [{"p50_ms": 1.2}, {"p50_ms": 1.4}, {"p50_ms": 9.0}]},
            "chat_c16": {"good": [{"rps": 100.0}, {"rps": 300.0}, {"rps": 200.0}]},
            "chat_c64": {"good": [{"rps": 150.0}, {"rps": 150.0}, {"rps": 150.0}]},
        },
    }
    assert report.held_back(res, "good", 20.0) == 0
    assert report.held_back(res, "bad", 20.0) == 10
    assert report.added(res, "chat_c1", "good", "p50_ms") == pytest.approx(1.2)
    assert report.peak_rps(res, "good") == (200.0, "c16")


def test_stream_fixture_is_twenty_valid_chunks_then_done() -> None:
    events = fixtures.stream_events()
    assert len(events) == fixtures.STREAM_CHUNKS + 1
    payloads = [json.loads(e.removeprefix(b"data: ").strip()) for e in events[:-1]]
    assert payloads[-1]["usage"]["completion_tokens"] == fixtures.COMPLETION_TOKENS
    assert events[-1] == b"data: [DONE]\n\n"
    completion = json.loads(fixtures.completion_json())
    assert completion["choices"][0]["message"]["content"].startswith("Faregate")


def test_client_stamps_each_paced_chunk_when_it_arrives() -> None:
    """The stream client against the paced upstream: chunks 20 ms apart arrive ~20 ms apart, none glued."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.paced_upstream", str(port), "20"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_port(port, 15, proc, "paced upstream")

        async def two_streams() -> list[list[float]]:
            conn = Connection("127.0.0.1", port)
            body = fixtures.request_body("m", stream=True)
            try:
                # Two on one connection: keep-alive and the chunked framing both hold.
                return [(await conn.post("/v1/chat/completions", body)).event_offsets_ms() for _ in range(2)]
            finally:
                await conn.close()

        for offsets in asyncio.run(two_streams()):
            assert len(offsets) == fixtures.STREAM_CHUNKS + 1
            gaps = [b - a for a, b in itertools.pairwise(offsets)]
            assert min(gaps) > 10, gaps
            assert offsets[-1] >= 20 * 19
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_smoke_run_measures_every_target_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_WORK_DIR": str(tmp_path / "work")}
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "latest-smoke.json").read_text())
    assert not res.get("failures"), res["failures"]
    names = ["direct", "nginx"]
    if (ROOT / "services" / "gateway" / "app.py").exists():
        assert "faregate" not in res["skipped"], res["skipped"].get("faregate")
        names.append("faregate")
    else:
        assert "faregate" in res["skipped"]
    for name in names:
        for scenario in ("chat_c1", "chat_c16", "stream_c16", "stream_timing_c1", "paced"):
            runs = res["scenarios"][scenario][name]
            assert runs and all(r["errors"] == 0 for r in runs), (scenario, name, runs)
        assert res["scenarios"]["chat_c16"][name][0]["rps"] > 0
        assert res["scenarios"]["stream_timing_c1"][name][0]["streams"] > 0
    # nginx with proxy_buffering off forwards each chunk as it comes: the paced check sees none held back.
    interval = res["context"]["upstream"]["paced_interval_ms"]
    assert report.held_back(res, "nginx", interval) == 0
    if "faregate" in names:
        for method in ("contract", "keys_api"):
            rev = res["revocation"][method]
            assert rev["trials"] == 5 and rev["workers"] >= 1, rev
            assert 0 < rev["p50_ms"] <= rev["p99_ms"], rev
        assert res["memory"]["faregate"]["idle"]["worker_max_mb"] > 0
    md = (out / "latest-smoke.md").read_text()
    assert "## Targets from issue 10" in md
    assert "Gateway req/s ÷ nginx hop's" in md


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
def test_inproc_drives_the_gateway_app_without_the_server(tmp_path: Path, stream: bool) -> None:
    """bench/inproc.py: every request answered 200 (a stream in several chunks; it exits non-zero otherwise), went
    upstream, and the hand-over time is reported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_WORK_DIR": str(tmp_path / "work")}
    argv = [sys.executable, "-m", "bench.inproc", "--requests", "50", *(["--stream"] if stream else [])]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    kind = "streaming" if stream else "sequential"
    assert any(line.startswith(f"50 {kind} requests: ") for line in lines), proc.stdout
    handed = next(line for line in lines if "hand-over: p50 " in line)
    assert float(handed.split("p50 ")[1].split(" µs")[0]) > 0, handed
    upstream = next(line for line in lines if "upstream write" in line)
    per_request = float(upstream.split(": ", 1)[1].split(" a request")[0])
    assert 1.0 <= per_request < 1.5, upstream  # one upstream request each, plus the odd other StreamWriter write
