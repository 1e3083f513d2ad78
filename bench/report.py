"""The report: every raw measurement in JSON, and a Markdown page with medians, spread, ratios and the issue's
targets beside what was measured."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import stats

Results = dict[str, Any]


# --- reading the raw results ------------------------------------------------------------------------------


def runs(res: Results, scenario: str, target: str) -> list[dict[str, Any]]:
    return list(res.get("scenarios", {}).get(scenario, {}).get(target, []))


def _values(res: Results, scenario: str, target: str, field: str) -> list[float]:
    return [r[field] for r in runs(res, scenario, target) if r.get(field) is not None]


def med(res: Results, scenario: str, target: str, field: str) -> float | None:
    values = _values(res, scenario, target, field)
    return stats.median(values) if values else None


def spread(res: Results, scenario: str, target: str, field: str) -> float | None:
    values = _values(res, scenario, target, field)
    return stats.spread_pct(values) if len(values) > 1 else None


def errors(res: Results, scenario: str, target: str) -> int:
    return sum(int(r.get("errors", 0)) for r in runs(res, scenario, target))


def _loaded(res: Results) -> list[str]:
    """The non-streaming scenarios with more than one connection (where capacity shows)."""
    return [s for s in res.get("scenarios", {}) if s.startswith("chat_c") and s != "chat_c1"]


def peak_rps(res: Results, target: str) -> tuple[float | None, str]:
    """The target's best median req/s over the concurrency levels (its capacity), and where it was reached."""
    best: tuple[float | None, str] = (None, "")
    for scenario in _loaded(res):
        value = med(res, scenario, target, "rps")
        if value is not None and (best[0] is None or value > best[0]):
            best = (value, scenario.removeprefix("chat_"))
    return best


def peak_rps_per_core(res: Results, target: str) -> float | None:
    present = [v for s in _loaded(res) if (v := med(res, s, target, "rps_per_core")) is not None]
    return max(present) if present else None


def stream_scenario(res: Results) -> str:
    return next((s for s in res.get("scenarios", {}) if s.startswith("stream_c")), "stream_c16")


def added(res: Results, scenario: str, target: str, field: str) -> float | None:
    """What a relay adds over the direct call (medians of the repeats)."""
    mine, floor = med(res, scenario, target, field), med(res, scenario, "direct", field)
    return None if mine is None or floor is None else mine - floor


def paced_added(res: Results, target: str) -> float | None:
    """Over the chunks, the largest (median arrival through the target minus median arrival directly)."""

    def per_chunk(name: str) -> list[float]:
        trials = [o for r in runs(res, "paced", name) for o in r.get("offsets_ms", [])]
        if not trials:
            return []
        n = min(len(o) for o in trials)
        return [stats.median([o[i] for o in trials]) for i in range(n)]

    mine, floor = per_chunk(target), per_chunk("direct")
    n = min(len(mine), len(floor))
    return max(mine[i] - floor[i] for i in range(n)) if n else None


def held_back(res: Results, target: str, interval_ms: float) -> int | None:
    """Chunks that arrive glued to the next one (gap under half the interval) in most streams.

    A relay that holds chunks back does it every time; one stream where a busy shared core delayed a read is
    noise, which the median over the streams discards."""
    trials = [o for r in runs(res, "paced", target) for o in r.get("offsets_ms", [])]
    if not trials:
        return None
    n = min(len(o) for o in trials)
    gaps = [stats.median([o[i] - o[i - 1] for o in trials]) for i in range(1, n)]
    return sum(1 for g in gaps if g < interval_ms / 2)


def peak_rss(res: Results, name: str) -> dict[str, float]:
    peak: dict[str, float] = {}
    for by_target in res.get("scenarios", {}).values():
        for r in by_target.get(name, []):
            for k, v in (r.get("rss_peak") or {}).items():
                peak[k] = max(peak.get(k, 0.0), v)
    return peak


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def billing_numbers(res: Results) -> dict[str, Any]:
    """Events/s and the lag out of billing_bench's JSON (`applied_events_per_s`, `lag_p50_ms`, `lag_p99_ms`).
    """
    b = res.get("billing") or {}
    result = b.get("result")
    if b.get("status") != "ok" or not isinstance(result, dict):
        return {"note": b.get("note") or f"billing bench {b.get('status', 'not run')}"}
    lag50, lag99 = result.get("lag_p50_ms"), result.get("lag_p99_ms")
    return {"events_per_s": result.get("applied_events_per_s"),
            "lag_p50_s": None if lag50 is None else lag50 / 1000,
            "lag_p99_s": None if lag99 is None else lag99 / 1000}


def dashboard_ms(res: Results) -> dict[str, Any]:
    u = res.get("usage") or {}
    result = u.get("result")
    if u.get("status") != "ok" or not isinstance(result, dict):
        return {"note": u.get("note") or f"usage bench {u.get('status', 'not run')}"}
    summary = result.get("queries", {}).get("summary_one_account", {}).get("median_ms")
    ingest = result.get("ingest", {}).get("events_per_s")
    return {"rows": int(result.get("rows", 0)), "summary_ms": summary, "ingest_per_s": ingest}


# --- the targets ----------------------------------------------------------------------------------


@dataclass
class Goal:
    what: str
    target: str
    measured: float | None
    unit: str
    at_least: float | None = None  # met when measured >= at_least
    at_most: float | None = None  # met when measured < at_most
    note: str = ""

    def verdict(self) -> tuple[str, str]:
        m = self.measured
        if m is None:
            return "not measured", self.note
        if self.at_least is not None:
            if m >= self.at_least:
                return "met", f"{m / self.at_least:.2f}× the target"
            if m <= 0:
                return "**missed**", "nothing measured"
            share, short = 100 * m / self.at_least, self.at_least / m
            return "**missed**", f"at {share:.0f}% of the target ({short:.1f}× short)"
        if self.at_most is not None:
            if m < self.at_most:
                return "met", f"{100 * (1 - m / self.at_most):.0f}% headroom" if m >= 0 else "below zero"
            return "**missed**", f"{m / self.at_most:.1f}× the limit" if self.at_most else "over the limit"
        return "", ""

    def shown(self) -> str:
        if self.measured is None:
            return "–"
        if self.unit == "×":
            return f"{self.measured:.1f}×"
        digits = 3 if self.unit in ("ms", "", "s") else 1
        return fmt(self.measured, digits) + (f" {self.unit}" if self.unit else "")


def goals(res: Results) -> list[Goal]:
    fg = "faregate"
    fg_rps, fg_at = peak_rps(res, fg)
    ll_rps, _ = peak_rps(res, "litellm")
    ng_rps, _ = peak_rps(res, "nginx")
    sc = stream_scenario(res)
    mem = res.get("memory", {}).get(fg, {})
    soak = res.get("soak", {})
    rev = res.get("revocation", {})
    rev_main = rev.get("keys_api") or rev.get("contract") or {}
    bill, dash = billing_numbers(res), dashboard_ms(res)
    no_litellm = "LiteLLM not measured in this run"
    worker_rss = [v for v in (peak_rss(res, fg).get("worker_max_mb"), soak.get("worker_max_mb")) if v]
    hb = held_back(res, fg, res["context"]["upstream"]["paced_interval_ms"])
    return [
        Goal("Gateway req/s ÷ LiteLLM's (1 worker, 1 core each)", "≥ 30×", ratio(fg_rps, ll_rps), "×",
             at_least=30, note=no_litellm),
        Goal("Same, per busy core (req/s ÷ CPU share used)", "≥ 30×",
             ratio(peak_rps_per_core(res, fg), peak_rps_per_core(res, "litellm")), "×", at_least=30,
             note=no_litellm),
        Goal("Gateway req/s ÷ nginx hop's", "≥ 1/20 (0.05)", ratio(fg_rps, ng_rps), "", at_least=0.05),
        Goal("Same, per busy core (req/s ÷ CPU share used)", "≥ 1/20 (0.05)",
             ratio(peak_rps_per_core(res, fg), peak_rps_per_core(res, "nginx")), "", at_least=0.05),
        Goal(f"Gateway req/s, 1 worker on 1 core (best of c16/c64: {fg_at or '–'})", "≥ 4,000/s (about)",
             fg_rps, "/s", at_least=4000),
        Goal("Added p50 latency at concurrency 1 (gateway − direct)", "< 0.5 ms",
             added(res, "chat_c1", fg, "p50_ms"), "ms", at_most=0.5),
        Goal("Streams/s ÷ LiteLLM's (20 chunks)", "≥ 25×", ratio(med(res, sc, fg, "rps"),
                                                                 med(res, sc, "litellm", "rps")), "×",
             at_least=25, note=no_litellm),
        Goal("Time to first chunk added over direct, p50", "< 0.5 ms",
             added(res, "stream_timing_c1", fg, "ttfb_p50_ms"), "ms", at_most=0.5),
        Goal("Chunks held back (arrived glued to the next one in most streams)", "0",
             None if hb is None else float(hb), "", at_most=0.5),
        Goal("Billing: usage events applied per second", "≥ 5,000/s", bill.get("events_per_s"), "/s",
             at_least=5000, note=bill.get("note", "")),
        Goal("Billing: response → debit lag, p50 (no target of its own)", "–", bill.get("lag_p50_s"), "s",
             note=bill.get("note", "")),
        Goal("Billing: response → debit lag, p99", "< 1 s", bill.get("lag_p99_s"), "s", at_most=1.0,
             note=bill.get("note", "")),
        Goal("Usage: events ingested per second (no target of its own)", "–", dash.get("ingest_per_s"), "/s",
             note=dash.get("note", "")),
        Goal("Key revocation (disable → every worker refuses), p99"
             + (" via the keys API" if rev.get("keys_api") else " via the keys contract" if rev_main else ""),
             "< 100 ms", rev_main.get("p99_ms"), "ms", at_most=100),
        Goal(f"Dashboard summary (one account) at {dash.get('rows', 0):,} log rows", "< 200 ms at 1,000,000",
             dash.get("summary_ms"), "ms", at_most=200, note=dash.get("note", "")),
        Goal("Gateway worker RSS under load", "< 100 MB", max(worker_rss, default=None), "MB", at_most=100,
             note=f"idle: {mem.get('idle', {}).get('worker_max_mb', '–')} MB"),
        Goal(f"Gateway worker RSS growth over the {_duration(soak.get('seconds', 0))} soak", "< 5%",
             soak.get("growth_pct"), "%", at_most=5, note="no soak in this mode"),
    ]


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f}-minute" if seconds >= 120 else f"{seconds:.0f}-second"


# --- the page ---------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}{suffix}"
    return f"{value:.{digits}f}{suffix}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


def _header(res: Results) -> list[str]:
    ctx = res["context"]
    m, pin, plan = ctx["machine"], ctx["pinning"], ctx["plan"]
    if pin["pinned"]:
        pinning = (
            f"**Pinning (`taskset`):** each system under test (the nginx hop, Faregate's 1-worker gateway, "
            f"LiteLLM, the Python relay floors) runs on CPU {pin['system_under_test']}; wrk, the stream client, "
            f"the nginx upstream, the paced upstream and the run's private Redis and NATS run on CPU "
            f"{pin['load_and_upstream']}. "
            f"The multi-worker gateway runs on all cores and so shares them with the load.")
    else:
        pinning = ("**Pinning:** this machine has one core, so nothing could be pinned apart; numbers are "
                   "not comparable to 2-core runs.")
    return [
        f"# Faregate benchmark — {ctx['mode']} run, {ctx['started_at']}",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}, Linux {m['kernel']}; commit "
        f"`{ctx['git']}`; the run took {ctx['duration_s'] / 60:.1f} min; load average at the end "
        f"{m['loadavg_at_end']}.",
        "",
        pinning,
        "",
        f"Method: {plan['rounds']} round(s); in each, every scenario runs once on every target, the target "
        f"order rotating between rounds so drift hits all alike. Tables show the median over rounds; '±' is "
        f"the spread (max−min)/median across rounds. wrk (one thread) runs {plan['load_s']:.0f} s per "
        f"measurement. "
        f"The upstream answers a fixed `{ctx['upstream']['model']}` completion and a "
        f"{ctx['upstream']['stream_chunks']}-chunk stream (+ `[DONE]`) from files.",
        "",
    ]


def summary_table(res: Results) -> list[str]:
    """The headline: one row per relay. This is the table README.md shows."""
    names: dict[str, str] = res["context"]["targets"]
    sc = stream_scenario(res)
    rows = []
    for name, label in names.items():
        if name == "direct" or not (runs(res, "chat_c1", name) or runs(res, "chat_c16", name)):
            continue
        rps, at = peak_rps(res, name)
        rss = peak_rss(res, name).get("worker_max_mb")
        rows.append([label, fmt(rps, 0) + (f" ({at})" if at else ""),
                     fmt(med(res, "chat_c16", name, "cpu_us_per_req"), 0),
                     fmt(added(res, "chat_c1", name, "p50_ms"), 3), fmt(med(res, sc, name, "rps"), 0),
                     fmt(added(res, "stream_timing_c1", name, "ttfb_p50_ms"), 3),
                     fmt(rss, 0)])
    return table(["relay", "req/s (peak)", "CPU µs/req (c16)", "added p50 ms (c1)", f"streams/s ({sc[7:]})",
                  "TTFB added p50 ms", "worker RSS MB (peak)"], rows)


def _chat_section(res: Results) -> list[str]:
    names: dict[str, str] = res["context"]["targets"]
    lines = ["## Non-streaming chat", ""]
    for scenario in sorted((s for s in res["scenarios"] if s.startswith("chat_c")), key=lambda s: int(s[6:])):
        rows = []
        for name, label in names.items():
            if not runs(res, scenario, name):
                continue
            sp = spread(res, scenario, name, "rps")
            cpu = med(res, scenario, name, "sut_cpu")
            rows.append([
                label, fmt(med(res, scenario, name, "rps"), 0) + (f" ±{sp:.0f}%" if sp is not None else ""),
                fmt(med(res, scenario, name, "p50_ms"), 3), fmt(med(res, scenario, name, "p90_ms"), 3),
                fmt(med(res, scenario, name, "p99_ms"), 3),
                fmt(added(res, scenario, name, "p50_ms"), 3) if name != "direct" else "",
                str(errors(res, scenario, name)), fmt(None if cpu is None else 100 * cpu, 0, "%"),
                fmt(med(res, scenario, name, "cpu_us_per_req"), 0),
                fmt(med(res, scenario, name, "rps_per_core"), 0),
            ])
        lines += [f"### concurrency {scenario[6:]}", ""]
        lines += table(["target", "req/s", "p50 ms", "p90 ms", "p99 ms", "added p50 ms", "errors", "SUT CPU",
                        "CPU µs/req", "req/s per busy core"], rows)
    lines += [
        "'SUT CPU' is the system under test's CPU time over the run's wall time (100% = one core busy). "
        "'CPU µs/req' is that CPU time per request, and 'req/s per busy core' = req/s ÷ SUT CPU: what one "
        "saturated core would carry at this cost per request. Both hold even when other processes on the "
        "shared machine took part of the core. Where SUT CPU is well under 100%, something else was the "
        "limit (for nginx: the single wrk thread sharing its core with the upstream).",
        "",
    ]
    return lines


def _stream_section(res: Results) -> list[str]:
    ctx = res["context"]
    names: dict[str, str] = ctx["targets"]
    sc = stream_scenario(res)
    rows = []
    for name, label in names.items():
        if not (runs(res, sc, name) or runs(res, "stream_timing_c1", name)):
            continue
        worst = paced_added(res, name)
        hb = held_back(res, name, ctx["upstream"]["paced_interval_ms"])
        t1 = "stream_timing_c1"
        rows.append([
            label, fmt(med(res, sc, name, "rps"), 0), fmt(med(res, sc, name, "p50_ms"), 2),
            fmt(med(res, sc, name, "p99_ms"), 2), fmt(med(res, t1, name, "ttfb_p50_ms"), 3),
            fmt(med(res, t1, name, "ttfb_p99_ms"), 3),
            fmt(added(res, t1, name, "ttfb_p50_ms"), 3) if name != "direct" else "",
            fmt(med(res, t1, name, "total_p50_ms"), 3), fmt(med(res, t1, name, "total_p99_ms"), 3),
            "" if name == "direct" else fmt(worst, 2), "–" if hb is None else str(hb),
            str(errors(res, sc, name) + errors(res, t1, name) + errors(res, "paced", name)),
        ])
    c = sc[8:]
    lines = ["## Streaming chat", ""]
    lines += table(["target", f"streams/s (c{c})", f"full stream p50 ms (c{c})", f"p99 ms (c{c})",
                    "TTFB p50 ms (c1)", "TTFB p99 ms (c1)", "TTFB added p50 ms", "full p50 ms (c1)",
                    "full p99 ms (c1)", "worst per-chunk delay vs direct ms (paced)", "chunks held back",
                    "errors"], rows)
    lines += [
        f"TTFB = from sending the request to the first complete SSE event; 'full' = to the last byte (one "
        f"connection, streams back to back). The paced upstream sends the same chunks "
        f"{ctx['upstream']['paced_interval_ms']:.0f} ms apart: 'worst per-chunk delay' is the largest, over "
        f"the chunks, of (median arrival through the target − median arrival directly); a chunk counts as "
        f"held back when, in most of the streams, it arrives less than half an interval before the next one "
        f"(it waited for it).",
        "",
    ]
    return lines


def _memory_section(res: Results) -> list[str]:
    names: dict[str, str] = res["context"]["targets"]
    rows = []
    for name, label in names.items():
        m = res.get("memory", {}).get(name)
        if not m:
            continue
        peak = peak_rss(res, name)
        rows.append([label, fmt(m.get("idle", {}).get("worker_max_mb"), 1), fmt(peak.get("worker_max_mb"), 1),
                     fmt(m.get("after_load", {}).get("worker_max_mb"), 1),
                     fmt(m.get("idle", {}).get("total_mb"), 1), fmt(peak.get("total_mb"), 1)])
    lines = ["## Memory (RSS)", ""]
    lines += table(["target", "worker idle MB", "worker peak under load MB", "worker after the rounds MB",
                    "all processes idle MB", "all processes peak MB"], rows)
    imported = res.get("setup", {}).get("gateway_import_mb")
    if imported:
        lines += [f"A Python process that has only imported the gateway app (`services.gateway.app`) holds "
                  f"{imported:.0f} MB; the rest of an idle worker's RSS is what it sets up at start-up.", ""]
    soak = res.get("soak")
    if soak:
        load = soak.get("load", {})
        lines += [
            f"Soak: Faregate (1 worker) under {soak.get('seconds', 0) / 60:.1f} min of load at 16 "
            f"connections ({fmt(load.get('rps'), 0)} req/s, {load.get('errors', 0)} errors): worker RSS "
            f"{fmt(soak.get('worker_first_mb'), 1)} MB at the first sample, "
            f"{fmt(soak.get('worker_last_mb'), 1)} MB at the end (max "
            f"{fmt(soak.get('worker_max_mb'), 1)} MB): growth {fmt(soak.get('growth_pct'), 2)}%.",
            "",
        ]
    return lines


def _pipeline_section(res: Results) -> list[str]:
    lines: list[str] = []
    rev = res.get("revocation") or {}
    names: dict[str, str] = res["context"]["targets"]
    rows = [[r["method"], str(r["trials"]), f"{r['connections']} / {r['workers']}",
             fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2), fmt(r["max_ms"], 2),
             f"{fmt(r['call_p50_ms'], 2)} / {fmt(r['call_p99_ms'], 2)}" if "call_p50_ms" in r else "–"]
            for r in (rev.get("keys_api"), rev.get("contract")) if r]
    if rows:
        lines += ["## Key revocation", "",
                  f"Against {names.get(rev['target'], rev['target'])}: the time from the start of the "
                  f"disable until every worker process answers 401 (each polled every millisecond on its "
                  f"own keep-alive connections; `ss` confirms every worker holds one).", ""]
        lines += table(["disabled by", "trials", "connections / workers", "p50 ms", "p99 ms", "max ms",
                        "the disable call itself, p50 / p99 ms"], rows)
        api, contract = rev.get("keys_api"), rev.get("contract")
        if api and contract and "call_p50_ms" in api:
            lines += [f"Through the API, the keys service's answer to the disable call takes "
                      f"{api['call_p50_ms'] / api['p50_ms']:.0%} of the p50; the gateway's own part (the "
                      f"contract row: from the published change to every worker refusing) is "
                      f"{contract['p50_ms']:.1f} ms at p50 and {contract['p99_ms']:.1f} ms at p99.", ""]
    parts = [("billing", "Billing throughput and lag (bench/billing_bench.py)"),
             ("usage", "Usage dashboard queries (bench/usage_bench.py)")]
    if any(res.get(k) for k, _ in parts):
        lines += ["## Billing and usage", ""]
    for key, title in parts:
        part = res.get(key)
        if not part:
            continue
        took = f" ({part['seconds']} s, args: {' '.join(part.get('args', [])) or 'none'})" \
            if part.get("seconds") is not None else ""
        note = f" — {part['note']}" if part.get("note") else ""
        lines += [f"**{title}**: {part.get('status')}{note}{took}", ""]
        result = part.get("result")
        if isinstance(result, dict) and key == "billing" and "applied_events_per_s" in result:
            r = result
            lines += [f"A backlog of {fmt(r.get('events'), 0)} usage events drained at "
                      f"{fmt(r['applied_events_per_s'], 0)} events/s; then "
                      f"{fmt(r.get('lag_events'), 0)} events at {fmt(r.get('paced_per_s'), 0)}/s: "
                      f"response → debit lag p50 {fmt(r.get('lag_p50_ms'), 0)} ms, "
                      f"p99 {fmt(r.get('lag_p99_ms'), 0)} ms, max {fmt(r.get('lag_max_ms'), 0)} ms.", ""]
        elif isinstance(result, dict) and key == "usage" and isinstance(result.get("queries"), dict):
            rows = [[name, fmt(q.get("median_ms"), 1), fmt(q.get("max_ms"), 1)]
                    for name, q in result["queries"].items() if isinstance(q, dict)]
            lines += [f"{fmt(result.get('rows'), 0)} request-log rows (made in "
                      f"{fmt(result.get('load_seconds'), 1)} s):", ""]
            lines += table(["query", "median ms", "max ms"], rows)
            ingest = result.get("ingest")
            if isinstance(ingest, dict) and ingest.get("events_per_s"):
                lines += [f"The usage consumer ingested {fmt(ingest.get('events'), 0)} events at "
                          f"{fmt(ingest['events_per_s'], 0)} events/s.", ""]
        elif isinstance(result, dict):
            lines += ["```json", json.dumps(result, indent=1)[:3000], "```", ""]
        elif part.get("output_tail"):
            lines += ["```", part["output_tail"][-1500:], "```", ""]
    return lines


def _profile_section(res: Results) -> list[str]:
    prof = res.get("profile")
    if not prof or not prof.get("samples"):
        return []
    cost = med(res, "chat_c16", "faregate", "cpu_us_per_req")
    lines = ["## Where the gateway's CPU goes", ""]
    if cost is not None:
        lines += [f"At 16 connections the 1-worker gateway spends **{cost:,.0f} µs of CPU per request**; "
                  f"4,000 req/s on one core leaves 250 µs for everything (framework, upstream call, Redis, "
                  f"usage event). py-spy sampled the worker for {prof['seconds']:.0f} s early in the soak "
                  f"(16 connections; {prof['samples']} on-CPU samples):", ""]
    def cells(rows: list[dict[str, Any]], i: int, code: bool) -> list[str]:
        if i >= len(rows):
            return ["", ""]
        name = f"`{rows[i]['name']}`" if code else rows[i]["name"]
        return [name, f"{rows[i]['share_pct']:.1f}%"]

    left, right = prof["by_package"], prof["by_step"]
    rows = [cells(left, i, False) + cells(right, i, True) for i in range(max(len(left), len(right)))]
    lines += table(["package running (self time)", "share", "hot-path step (deepest Faregate frame)",
                    "share"], rows)
    lines += ["Reproduce and dig further with `python -m bench.profile --seconds 20` (it leaves the "
              "collapsed stacks for a flame graph in bench/.work/).", ""]
    return lines


def _notes(res: Results) -> list[str]:
    notes = [f"- Skipped **{what}**: {why}" for what, why in res.get("skipped", {}).items()]
    notes += [f"- Failed: {fail['what']}: {fail['error'][:500]}" for fail in res.get("failures", [])]
    if res.get("setup", {}).get("litellm_install_s"):
        notes.append(f"- LiteLLM was installed during this run ({res['setup']['litellm_install_s']:.0f} s).")
    short = []
    for scenario, by_target in res.get("scenarios", {}).items():
        if not scenario.startswith(("chat_c", "stream_c")):
            continue
        conns = int(scenario.rsplit("_c", 1)[1])
        for name, rs in by_target.items():
            # wrk drops the requests in flight when it stops: about half a request per connection.
            biases = [conns / 2 / r["requests"] for r in rs if r.get("requests")]
            if biases and stats.median(biases) > 0.05:
                short.append(f"{name} {scenario} (~{100 * stats.median(biases):.0f}%)")
    if short:
        notes.append("- Runs too short for the target's latency (the run's time budget capped them), so "
                     "req/s may be under-counted by about: " + ", ".join(short) + ".")
    shares = res.get("cpu_available") or []
    if shares:
        sut = str(res["context"]["pinning"]["system_under_test"][0])
        seen = [s[sut] for s in shares if sut in s]
        if seen:
            notes.append(
                f"- A busy process pinned to the system-under-test core got {100 * min(seen):.0f}–"
                f"{100 * max(seen):.0f}% of it at the start of each round: the rest went to other people's "
                f"processes on this shared machine. Throughput and latency suffer accordingly; CPU µs/req "
                f"much less.")
    notes += _floor_notes(res)
    rtt = res.get("setup", {}).get("redis_rtt")
    notes += [
        "- Redis and NATS are private to the run and pinned to the load core: their CPU is not in 'SUT CPU', "
        "though the gateway's reservations and usage events cost them work."
        + (f" A Redis round trip from the load core took {rtt['p50_ms']:.2f} ms at p50 and "
           f"{rtt['p99_ms']:.2f} ms at p99 before the rounds (idle)." if rtt else ""),
        "- The machine is shared with other people's processes, which take CPU from both cores: absolute "
        "numbers drift between runs. The ratios between targets measured in the same rounds, and CPU µs/req, "
        "are what to compare.",
    ]
    return ["## Notes", "", *notes, ""]


def _floor_notes(res: Results) -> list[str]:
    """What a Python relay cannot go below here (bench/floor.py), beside what the gateway adds."""
    out = []
    sc = stream_scenario(res)
    for name in ("floor-asgi", "floor-rsgi", "faregate"):
        if not runs(res, "chat_c1", name):
            continue
        out.append(f"{res['context']['targets'][name]}: {fmt(added(res, 'chat_c1', name, 'p50_ms'), 3)} ms added "
                   f"at p50 (c1), {fmt(added(res, 'stream_timing_c1', name, 'ttfb_p50_ms'), 3)} ms to the first "
                   f"chunk, {fmt(med(res, 'chat_c16', name, 'cpu_us_per_req'), 0)} µs CPU/request (c16), "
                   f"{fmt(med(res, sc, name, 'rps'), 0)} streams/s")
    if len(out) < 2:
        return []
    return ["- The floor of a Python relay (bench/floor.py: granian, the body read, one upstream call through the "
            "gateway's own upstream client, the answer handed back; no auth, limits, Redis or usage event), "
            "beside the gateway, in this run: " + "; ".join(out) + ". What the gateway adds beyond the ASGI "
            "floor is Faregate's own work (key check, admission on the key's lease or by a Redis round trip, "
            "settlement, the event)."]


def markdown(res: Results) -> str:
    lines = _header(res)
    lines += ["## Summary", "", *summary_table(res)]
    lines += ["For scale, issue 10's measurements with this method on an idle machine of this kind: the "
              "nginx hop ~80,000 req/s adding ~0.09 ms at p50; LiteLLM (1 worker) ~105 req/s, ~40 streams/s, "
              "adding ~9 ms at p50, 430 MB RSS. Compare this run's rows with each other, not with those.", ""]
    lines += ["## Targets from issue 10", ""]
    lines += table(["what", "target", "measured", "verdict", "how far"],
                   [[g.what, g.target, g.shown(), *g.verdict()] for g in goals(res)])
    lines += _chat_section(res) + _stream_section(res) + _memory_section(res) + _profile_section(res)
    lines += _pipeline_section(res)
    lines += _notes(res)
    return "\n".join(lines)


def write(res: Results, out_dir: Path) -> tuple[Path, Path]:
    """Write `<stamp>-<mode>.{md,json}` and copy them to `latest-<mode>.{md,json}`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, mem in res.get("memory", {}).items():
        mem["peak"] = peak_rss(res, name)
    res["goals"] = [{"what": g.what, "target": g.target, "measured": g.measured, "verdict": g.verdict()[0],
                     "how_far": g.verdict()[1]} for g in goals(res)]
    mode = res["context"]["mode"]
    stamp = datetime.fromisoformat(res["context"]["started_at"]).strftime("%Y%m%d-%H%M")
    md, js = out_dir / f"{stamp}-{mode}.md", out_dir / f"{stamp}-{mode}.json"
    js.write_text(json.dumps(res, indent=1, default=str))
    md.write_text(markdown(res))
    shutil.copyfile(md, out_dir / f"latest-{mode}.md")
    shutil.copyfile(js, out_dir / f"latest-{mode}.json")
    return md, js
