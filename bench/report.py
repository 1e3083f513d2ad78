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

# Issue 10's reference measurements on this kind of machine, before any code of ours existed.
REFERENCE = {"nginx_rps": 80_000, "nginx_added_p50_ms": 0.09, "litellm_rps": 105, "litellm_streams": 40,
             "litellm_added_p50_ms": 9.0, "litellm_rss_mb": 430}


# --- reading the raw results ----------------------------------------------------------------------------------


def runs(res: dict[str, Any], scenario: str, target: str) -> list[dict[str, Any]]:
    return list(res.get("scenarios", {}).get(scenario, {}).get(target, []))


def med(res: dict[str, Any], scenario: str, target: str, field: str) -> float | None:
    values = [r[field] for r in runs(res, scenario, target) if r.get(field) is not None]
    return stats.median(values) if values else None


def spread(res: dict[str, Any], scenario: str, target: str, field: str) -> float | None:
    values = [r[field] for r in runs(res, scenario, target) if r.get(field) is not None]
    return stats.spread_pct(values) if len(values) > 1 else None


def errors(res: dict[str, Any], scenario: str, target: str) -> int:
    return sum(int(r.get("errors", 0)) for r in runs(res, scenario, target))


def peak_rps(res: dict[str, Any], target: str) -> tuple[float | None, str]:
    """The target's best median req/s over the concurrency levels (its capacity), and where it was reached."""
    best: tuple[float | None, str] = (None, "")
    for scenario in res.get("scenarios", {}):
        if scenario.startswith("chat_c") and scenario != "chat_c1":
            value = med(res, scenario, target, "rps")
            if value is not None and (best[0] is None or value > best[0]):
                best = (value, scenario.removeprefix("chat_"))
    return best


def peak_rps_per_core(res: dict[str, Any], target: str) -> float | None:
    values = [med(res, s, target, "rps_per_core") for s in res.get("scenarios", {})
              if s.startswith("chat_c") and s != "chat_c1"]
    present = [v for v in values if v is not None]
    return max(present) if present else None


def added(res: dict[str, Any], scenario: str, target: str, field: str) -> float | None:
    """What a relay adds over the direct call (medians of the repeats)."""
    mine, floor = med(res, scenario, target, field), med(res, scenario, "direct", field)
    return None if mine is None or floor is None else mine - floor


def paced_added(res: dict[str, Any], target: str) -> tuple[float | None, float | None]:
    """Per chunk, the median arrival offset through the target minus directly: (largest, smallest) over chunks."""

    def per_chunk(name: str) -> list[float]:
        trials = [o for r in runs(res, "paced", name) for o in r.get("offsets_ms", [])]
        if not trials:
            return []
        n = min(len(o) for o in trials)
        return [stats.median([o[i] for o in trials]) for i in range(n)]

    mine, floor = per_chunk(target), per_chunk("direct")
    n = min(len(mine), len(floor))
    if not n:
        return None, None
    diffs = [mine[i] - floor[i] for i in range(n)]
    return max(diffs), min(diffs)


def held_back(res: dict[str, Any], target: str) -> int | None:
    values = [r["held_back_max"] for r in runs(res, "paced", target) if r.get("trials")]
    return max(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# --- formatting ---------------------------------------------------------------------------------------------------


def f(value: float | None, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}{suffix}"
    return f"{value:.{digits}f}{suffix}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


@dataclass
class Goal:
    what: str
    target: str
    measured: float | None
    unit: str
    at_least: float | None = None  # the goal is measured >= at_least
    at_most: float | None = None  # the goal is measured < at_most
    note: str = ""

    def verdict(self) -> tuple[str, str]:
        m = self.measured
        if m is None:
            return "not measured", self.note or ""
        if self.at_least is not None:
            if m >= self.at_least:
                return "met", f"{m / self.at_least:.2f}× the target"
            return "**missed**", f"at {100 * m / self.at_least:.0f}% of the target ({self.at_least / m:.1f}× short)" \
                if m > 0 else "nothing measured"
        if self.at_most is not None:
            if m < self.at_most:
                return "met", f"{100 * (1 - m / self.at_most):.0f}% headroom"
            return "**missed**", f"{m / self.at_most:.1f}× the limit"
        return "", ""


def goals(res: dict[str, Any]) -> list[Goal]:
    fg = "faregate"
    fg_rps, fg_at = peak_rps(res, fg)
    ll_rps, _ = peak_rps(res, "litellm")
    ng_rps, _ = peak_rps(res, "nginx")
    fg_core, ng_core = peak_rps_per_core(res, fg), peak_rps_per_core(res, "nginx")
    sc = next((s for s in res.get("scenarios", {}) if s.startswith("stream_c")), "stream_c16")
    fg_streams, ll_streams = med(res, sc, fg, "rps"), med(res, sc, "litellm", "rps")
    mem = res.get("memory", {}).get(fg, {})
    soak = res.get("soak", {})
    rev = res.get("revocation", {})
    bill = billing_numbers(res)
    dash = dashboard_ms(res)
    return [
        Goal("Gateway req/s ÷ LiteLLM's (1 worker, 1 core each)", "≥ 30×", ratio(fg_rps, ll_rps), "×",
             at_least=30, note="LiteLLM not measured in this run"),
        Goal("Gateway req/s ÷ nginx hop's", "≥ 1/20 (0.05)", ratio(fg_rps, ng_rps), "", at_least=0.05),
        Goal("Same, per busy core (req/s ÷ the SUT's CPU use)", "≥ 1/20 (0.05)", ratio(fg_core, ng_core), "",
             at_least=0.05),
        Goal(f"Gateway req/s, 1 worker on 1 core (peak, {fg_at or '–'})", "≥ 4,000/s", fg_rps, "/s", at_least=4000),
        Goal("Added p50 latency at concurrency 1 (gateway − direct)", "< 0.5 ms", added(res, "chat_c1", fg, "p50_ms"),
             "ms", at_most=0.5),
        Goal("Streams/s ÷ LiteLLM's (20 chunks)", "≥ 25×", ratio(fg_streams, ll_streams), "×", at_least=25,
             note="LiteLLM not measured in this run"),
        Goal("Time to first chunk added over direct, p50", "< 0.5 ms",
             added(res, "stream_timing_c1", fg, "ttfb_p50_ms"), "ms", at_most=0.5),
        Goal("Chunks held back (arrived glued to the next one), worst stream", "0",
             None if held_back(res, fg) is None else float(held_back(res, fg) or 0), "", at_most=0.5),
        Goal("Billing: usage events applied per second", "≥ 5,000/s", bill.get("events_per_s"), "/s",
             at_least=5000, note=bill.get("note", "")),
        Goal("Billing: response → debit lag, p99", "< 1 s", bill.get("lag_p99_s"), "s", at_most=1.0,
             note=bill.get("note", "")),
        Goal("Key revocation (disable → every worker refuses), p99", "< 100 ms", rev.get("p99_ms"), "ms",
             at_most=100),
        Goal(f"Dashboard summary at {dash.get('rows', 0):,} log rows", "< 200 ms at 1,000,000",
             dash.get("summary_ms"), "ms", at_most=200, note=dash.get("note", "")),
        Goal("Gateway worker RSS under load", "< 100 MB",
             max([v for v in (mem.get("peak_worker_mb"), soak.get("worker_max_mb")) if v is not None], default=None),
             "MB", at_most=100),
        Goal(f"Gateway worker RSS growth over the {soak.get('seconds', 0) / 60:.0f}-minute soak", "< 5%",
             soak.get("growth_pct"), "%", at_most=5),
    ]


def billing_numbers(res: dict[str, Any]) -> dict[str, Any]:
    """Pick events/s and the p99 lag out of billing_bench's JSON, whatever it names them."""
    b = res.get("billing") or {}
    if b.get("status") != "ok" or not isinstance(b.get("result"), dict):
        return {"note": b.get("note") or b.get("status", "not run")}
    flat = _flatten(b["result"])
    out: dict[str, Any] = {}
    for k, v in flat.items():
        lk = k.lower()
        if not isinstance(v, (int, float)):
            continue
        if "events_per_s" not in out and ("per_s" in lk or "per_sec" in lk or "rate" in lk) and "event" in lk:
            out["events_per_s"] = float(v)
        if "lag" in lk and "p99" in lk and "lag_p99_s" not in out:
            out["lag_p99_s"] = float(v) / 1000 if lk.endswith("ms") else float(v)
    return out


def dashboard_ms(res: dict[str, Any]) -> dict[str, Any]:
    u = res.get("usage") or {}
    if u.get("status") != "ok" or not isinstance(u.get("result"), dict):
        return {"note": u.get("note") or u.get("status", "not run")}
    r = u["result"]
    q = r.get("queries", {})
    summary = q.get("summary_one_account", {}).get("median_ms")
    return {"rows": int(r.get("rows", 0)), "summary_ms": summary}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --- the page -------------------------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    ctx = res["context"]
    names: dict[str, str] = ctx["targets"]
    pin = ctx["pinning"]
    lines = [
        f"# Faregate benchmark — {ctx['mode']} run, {ctx['started_at']}",
        "",
        f"Machine: {ctx['machine']['cores']} cores ({ctx['machine']['cpu']}), Python {ctx['machine']['python']}, "
        f"Linux {ctx['machine']['kernel']}; commit `{ctx['git']}`; run took {ctx['duration_s'] / 60:.1f} min; "
        f"load average at the end {ctx['machine']['loadavg_at_end']}.",
        "",
        (f"**Pinning (`taskset`):** each system under test (nginx hop, Faregate's 1-worker gateway, LiteLLM) runs "
         f"on CPU {pin['system_under_test']}; wrk, the stream client, the nginx upstream, the paced upstream and "
         f"the run's private Redis and NATS run on CPU {pin['load_and_upstream']}. The multi-worker gateway runs on "
         f"all cores and so shares them with the load." if pin["pinned"] else
         "**Pinning:** this machine has one core, so nothing could be pinned apart; numbers are not comparable "
         "to 2-core runs."),
        "",
        f"Method: {ctx['plan']['rounds']} round(s); in each, every scenario runs once on every target, the "
        f"target order rotating between rounds so drift hits all alike. Tables show the median over rounds; "
        f"'±' is the spread (max−min)/median across rounds. wrk runs {ctx['plan']['load_s']:.0f} s per "
        f"measurement with one thread; the upstream answers a fixed `{ctx['upstream']['model']}` completion and a "
        f"{ctx['upstream']['stream_chunks']}-chunk stream (+`[DONE]`) from files.",
        "",
    ]
    lines += ["## Targets from issue 10", ""]
    rows = []
    for g in goals(res):
        verdict, how = g.verdict()
        unit = g.unit if g.unit not in ("", "×") else ""
        shown = f(g.measured, 3 if g.unit in ("ms", "", "s") else 1) + (f" {unit}" if unit and g.measured is not None
                                                                          else "")
        if g.unit == "×" and g.measured is not None:
            shown = f"{g.measured:.1f}×"
        rows.append([g.what, g.target, shown, verdict, how])
    lines += table(["what", "target", "measured", "verdict", "how far"], rows)

    lines += ["## Non-streaming chat", ""]
    order = [n for n in names]
    for scenario in sorted((s for s in res["scenarios"] if s.startswith("chat_c")), key=lambda s: int(s[6:])):
        c = scenario[6:]
        rows = []
        for name in order:
            if not runs(res, scenario, name):
                continue
            rps_sp = spread(res, scenario, name, "rps")
            rows.append([
                names[name],
                f(med(res, scenario, name, "rps"), 0) + (f" ±{rps_sp:.0f}%" if rps_sp is not None else ""),
                f(med(res, scenario, name, "p50_ms"), 3), f(med(res, scenario, name, "p90_ms"), 3),
                f(med(res, scenario, name, "p99_ms"), 3),
                f(added(res, scenario, name, "p50_ms"), 3) if name != "direct" else "",
                str(errors(res, scenario, name)),
                f(100 * v, 0, "%") if (v := med(res, scenario, name, "sut_cpu")) is not None else "",
                f(med(res, scenario, name, "cpu_us_per_req"), 0),
                f(med(res, scenario, name, "rps_per_core"), 0),
            ])
        lines += [f"### concurrency {c}", ""]
        lines += table(["target", "req/s", "p50 ms", "p90 ms", "p99 ms", "added p50 ms", "errors", "SUT CPU",
                        "CPU µs/req", "req/s per busy core"], rows)
    lines += ["'SUT CPU' is the system under test's CPU time over the run's wall time (100% = one core busy); "
              "'CPU µs/req' is that CPU time per request; 'req/s per busy core' = req/s ÷ SUT CPU, what "
              "one saturated core would carry at this cost per request. These two hold even when other processes "
              "on the shared machine took part of the core. Where the SUT CPU is well under 100%, the load side (one wrk thread sharing its core with "
              "the upstream) was the limit, not the system under test.", ""]

    lines += ["## Streaming chat", ""]
    sc = next((s for s in res["scenarios"] if s.startswith("stream_c")), None)
    rows = []
    for name in order:
        if sc is None or not (runs(res, sc, name) or runs(res, "stream_timing_c1", name)):
            continue
        mx, _mn = paced_added(res, name)
        hb = held_back(res, name)
        rows.append([
            names[name],
            f(med(res, sc, name, "rps"), 0), f(med(res, sc, name, "p50_ms"), 2), f(med(res, sc, name, "p99_ms"), 2),
            f(med(res, "stream_timing_c1", name, "ttfb_p50_ms"), 3),
            f(med(res, "stream_timing_c1", name, "ttfb_p99_ms"), 3),
            f(added(res, "stream_timing_c1", name, "ttfb_p50_ms"), 3) if name != "direct" else "",
            f(med(res, "stream_timing_c1", name, "total_p50_ms"), 3),
            f(med(res, "stream_timing_c1", name, "total_p99_ms"), 3),
            "" if name == "direct" or mx is None else f(mx, 2),
            "–" if hb is None else str(hb),
            str(errors(res, sc, name) + errors(res, "stream_timing_c1", name) + errors(res, "paced", name)),
        ])
    c = sc[8:] if sc else "?"
    lines += table(["target", f"streams/s (c{c})", f"full stream p50 ms (c{c})", f"p99 ms (c{c})",
                    "TTFB p50 ms (c1)", "TTFB p99 ms (c1)", "TTFB added p50 ms", "full p50 ms (c1)",
                    "full p99 ms (c1)", "worst per-chunk delay vs direct, ms (paced)", "chunks held back",
                    "errors"], rows)
    lines += [f"TTFB = time from sending the request to the first complete SSE event; 'full' = to the last byte. "
              f"The paced upstream sends the same 20 chunks {ctx['upstream']['paced_interval_ms']:.0f} ms apart: "
              f"'worst per-chunk delay' is, over the chunks, the largest difference between a chunk's median arrival "
              f"through the target and directly; a chunk counts as held back when it arrives less than half an "
              f"interval before the next one (it waited for it).", ""]

    lines += ["## Memory (RSS)", ""]
    rows = []
    for name in order:
        m = res.get("memory", {}).get(name)
        if not m:
            continue
        peak = _peak_rss(res, name)
        rows.append([names[name], f(m.get("idle", {}).get("worker_max_mb"), 1),
                     f(peak.get("worker_max_mb"), 1), f(m.get("after_load", {}).get("worker_max_mb"), 1),
                     f(m.get("idle", {}).get("total_mb"), 1), f(peak.get("total_mb"), 1)])
    lines += table(["target", "worker idle MB", "worker peak under load MB", "worker after load MB",
                    "all processes idle MB", "all processes peak MB"], rows)
    soak = res.get("soak")
    if soak:
        load = soak.get("load", {})
        lines += [f"Soak: Faregate (1 worker) under {soak.get('seconds', 0) / 60:.0f} min of load at 16 "
                  f"connections ({f(load.get('rps'), 0)} req/s, {load.get('errors', 0)} errors): worker RSS "
                  f"{f(soak.get('worker_first_mb'), 1)} MB at the first sample → {f(soak.get('worker_last_mb'), 1)} MB "
                  f"at the end (max {f(soak.get('worker_max_mb'), 1)} MB), growth {f(soak.get('growth_pct'), 2)}%.",
                  ""]

    rev = res.get("revocation")
    if rev:
        lines += ["## Key revocation", "",
                  f"{rev['trials']} trials against {names.get(rev['target'], rev['target'])}, polling "
                  f"{rev['connections']} keep-alive connections that reach all {rev['workers']} worker processes "
                  f"(checked with `ss`): p50 {rev['p50_ms']:.2f} ms, p99 {rev['p99_ms']:.2f} ms, max "
                  f"{rev['max_ms']:.2f} ms. Disabled by: {rev['method']}.", ""]

    lines += ["## Billing and usage", ""]
    for key, title in (("billing", "Billing throughput and lag (bench/billing_bench.py)"),
                       ("usage", "Usage dashboard queries (bench/usage_bench.py)")):
        part = res.get(key)
        if not part:
            continue
        lines += [f"**{title}**: {part.get('status')}" + (f" — {part['note']}" if part.get("note") else "")
                  + (f" ({part['seconds']} s, args {' '.join(part.get('args', [])) or 'none'})"
                     if part.get("seconds") is not None else ""), ""]
        if isinstance(part.get("result"), dict):
            lines += ["```json", json.dumps(part["result"], indent=1)[:3000], "```", ""]
        elif part.get("output_tail"):
            lines += ["```", part["output_tail"][-1500:], "```", ""]

    notes = []
    for what, why in res.get("skipped", {}).items():
        notes.append(f"- Skipped **{what}**: {why}")
    for fail in res.get("failures", []):
        notes.append(f"- Failed: {fail['what']}: {fail['error'][:500]}")
    if res.get("setup", {}).get("litellm_install_s"):
        notes.append(f"- LiteLLM was installed during this run ({res['setup']['litellm_install_s']:.0f} s).")
    notes.append("- Redis and NATS are private to the run and pinned to the load core; their CPU is not in the "
                 "'SUT CPU' column, though the gateway's reservations and usage events cost them work.")
    notes.append("- The machine is shared with other people's test runs: absolute numbers drift between runs; "
                 "the ratios between targets measured in the same rounds are what to compare.")
    lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines)


def _peak_rss(res: dict[str, Any], name: str) -> dict[str, float]:
    peak: dict[str, float] = {}
    for scenario, by_target in res.get("scenarios", {}).items():
        for r in by_target.get(name, []):
            for k, v in (r.get("rss_peak") or {}).items():
                peak[k] = max(peak.get(k, 0.0), v)
    return peak


def write(res: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write `<stamp>-<mode>.{md,json}` and copy them to `latest-<mode>.{md,json}`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in res.get("memory", {}):
        res["memory"][name]["peak"] = _peak_rss(res, name)
        res["memory"][name]["peak_worker_mb"] = res["memory"][name]["peak"].get("worker_max_mb")
    res["goals"] = [{"what": g.what, "target": g.target, "measured": g.measured, "verdict": g.verdict()[0],
                     "how_far": g.verdict()[1]} for g in goals(res)]
    stamp = datetime.fromisoformat(res["context"]["started_at"]).strftime("%Y%m%d-%H%M")
    base = out_dir / f"{stamp}-{res['context']['mode']}"
    md, js = base.with_suffix(".md"), base.with_suffix(".json")
    js.write_text(json.dumps(res, indent=1, default=str))
    md.write_text(markdown(res))
    for src, dst in ((md, f"latest-{res['context']['mode']}.md"), (js, f"latest-{res['context']['mode']}.json")):
        shutil.copyfile(src, out_dir / dst)
    return md, js

