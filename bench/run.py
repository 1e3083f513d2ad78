"""`make bench` / `make bench-quick`: bring up the targets, run every scenario interleaved and repeated, write
the report (Markdown and JSON) under bench/results/.

    python -m bench.run [--quick | --smoke] [--no-litellm] [--no-pipeline] [--out DIR]

Full mode (~15-20 minutes on 2 cores) runs three rounds and the 10-minute soak; --quick one short round
(~3 min); --smoke a few seconds per target, for CI (direct, nginx and Faregate only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    engines,
    fixtures,
    floor,
    gateway,
    keys_service,
    litellm_proxy,
    nginx,
    pipeline,
    profile,
    report,
    revocation,
    scenarios,
    targets,
)
from bench.system import (
    ROOT,
    WORK,
    BenchError,
    Child,
    Cores,
    cpu_available,
    cpu_model,
    ensure_debian_tools,
    free_port,
    loadavg,
    pin,
    spawn,
    wait_port,
)
from bench.targets import Target
from faregate import stack as faregate_stack
from faregate.cli import load_all_configs
from shared import config
from shared.config import CommonSettings

PACED_INTERVAL_MS = 20.0


@dataclass(frozen=True)
class Plan:
    mode: str
    rounds: int
    load_s: int  # each wrk run (wrk takes whole seconds)
    stream_s: float  # each run of back-to-back timed streams
    paced_trials: int  # paced streams per target per round
    soak_s: float
    revocation_trials: int
    profile_s: float  # py-spy sampling of the 1-worker gateway under load (0: none)
    max_load_s: float  # longest a wrk run may be stretched for a slow target (see Bench._load)
    concurrency: tuple[int, ...] = (1, 16, 64)
    stream_concurrency: int = 16
    usage_rows: int = 1_000_000
    pipeline_timeout_s: float = 240
    # billing_bench's defaults (100k events, 15 s paced) take 2.5 min here: sized to fit the 20-minute budget.
    billing_args: tuple[str, ...] = ()
    # bench/floor.py's minimal Python relays (ASGI and RSGI on granian) as targets of their own
    floor: bool = True


PLANS = {
    "full": Plan("full", rounds=3, load_s=3, stream_s=1.5, paced_trials=4, soak_s=600, revocation_trials=100,
                 profile_s=10, max_load_s=6,
                 billing_args=("--events", "30000", "--rate", "2000", "--seconds", "8")),
    "quick": Plan("quick", rounds=1, load_s=2, stream_s=0.5, paced_trials=3, soak_s=10, revocation_trials=10,
                  profile_s=3, max_load_s=4, usage_rows=100_000, pipeline_timeout_s=90,
                  billing_args=("--events", "10000", "--rate", "1000", "--seconds", "3", "--accounts", "20")),
    "smoke": Plan("smoke", rounds=1, load_s=1, stream_s=0.5, paced_trials=3, soak_s=0, revocation_trials=5,
                  profile_s=0, max_load_s=2, concurrency=(1, 16), usage_rows=10_000, pipeline_timeout_s=60,
                  floor=False),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(results: dict[str, Any], key: str, what: str) -> Iterator[None]:
    """Run one measurement; a failure is recorded beside the results instead of ending the run.

    Any exception: an unattended run must still stop what it started and write the report, and the failure
    with its message is in that report."""
    try:
        yield
    except Exception as exc:
        log(f"{what} failed: {exc}")
        results.setdefault("failures", []).append({"what": what, "key": key, "error": str(exc)[:2000]})


class Bench:
    def __init__(self, plan: Plan, *, litellm: bool, pipeline_benches: bool) -> None:
        self.plan = plan
        self.want_litellm = litellm
        self.want_pipeline = pipeline_benches
        self.cores = Cores.detect()
        self.children: list[Child] = []
        self.targets: list[Target] = []
        self.multi: Target | None = None  # the gateway with as many workers as cores
        self.stack: gateway.Stack | None = None
        self.engines: engines.Engines | None = None
        self.ports: nginx.Ports | None = None
        self.capacity: dict[tuple[str, str], float] = {}  # best req/s seen per (target, json|stream)
        self.results: dict[str, Any] = {"scenarios": {}, "memory": {}, "skipped": {}, "setup": {}}

    # --- bring-up -------------------------------------------------------------------------------------------

    def start(self) -> None:
        ensure_debian_tools()
        self._ensure_engines()
        up, ports = nginx.start_upstream(self.cores)
        self.children.append(up)
        ports.paced = free_port()
        self.ports = ports
        paced = spawn("paced-upstream", pin(self.cores.load, [sys.executable, "-m", "bench.paced_upstream",
                                                              str(ports.paced), str(PACED_INTERVAL_MS)]),
                      env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
        self.children.append(paced)
        wait_port(ports.paced, 15, paced.proc, "paced upstream")
        self.targets.append(targets.direct(ports.json, ports.stream, ports.paced))
        hop_child, hop_ports = nginx.start_hop(self.cores, ports)
        hop = targets.hop(hop_child, hop_ports.json, hop_ports.stream, hop_ports.paced)
        self.targets.append(hop)
        # LiteLLM imports for many seconds: let it do so while the gateways start.
        litellm = self._launch_litellm(ports)
        self._start_faregate(ports)
        if self.plan.floor:
            for interface in ("asgi", "rsgi"):
                with step(self.results, "floor", f"starting the {interface} floor relay"):
                    self.targets.append(floor.start(interface, (ports.json, ports.stream, ports.paced),
                                                    self.cores.sut))
        if litellm is not None:
            try:
                litellm_proxy.wait_ready(litellm)
                log("LiteLLM proxy ready")
                self.targets.append(litellm)
            except Exception as exc:  # left out, with the reason in the report
                self.results["skipped"]["litellm"] = f"could not start: {str(exc)[:1500]}"
                log(f"LiteLLM skipped: {exc}")
        time.sleep(1)
        for t in self.targets + ([self.multi] if self.multi else []):
            if t.process is not None:
                self.results["memory"].setdefault(t.name, {})["idle"] = t.memory()

    def _ensure_engines(self) -> None:
        """The configured Postgres, Redis and NATS (migrations, the billing and usage scripts) answer, or
        private ones start, as for `make test`; unattended runs need nothing started by hand."""
        load_all_configs()
        common = config.load(CommonSettings)
        with step(self.results, "engines", "configured engines"):
            try:
                self.results["setup"]["engines"] = faregate_stack.ensure_all(
                    common.database_url, common.redis_url, common.nats_url, common.data_dir)
            except SystemExit as exc:
                raise BenchError(f"engines: {exc}") from None

    def _start_faregate(self, ports: nginx.Ports) -> None:
        why = gateway.gateway_available()
        if why:
            self.results["skipped"]["faregate"] = why
            log(f"Faregate skipped: {why}")
            return
        try:
            self.engines = engines.start(self.cores)
            self.stack = gateway.open_stack(self.engines.redis_url, self.engines.nats_url)
            self.results["setup"]["redis_rtt"] = engines.redis_rtt_ms(self.engines.redis_url)
            self.results["setup"]["gateway_import_mb"] = gateway.import_footprint_mb()
            secret = gateway.seed(self.stack, ports.json, ports.stream, ports.paced)
            log("starting Faregate's gateway (1 worker, system-under-test core)")
            one = gateway.start(self.stack, secret, workers=1, cpus=self.cores.sut, name="faregate",
                                label="Faregate gateway (1 worker)")
            self.targets.append(one)
            n = len(self.cores.all)
            if n > 1:
                log(f"starting Faregate's gateway ({n} workers, all cores)")
                self.multi = gateway.start(self.stack, secret, workers=n, cpus=self.cores.all,
                                           name=f"faregate-{n}w",
                                           label=f"Faregate gateway ({n} workers, {n} cores)")
        except Exception as exc:  # left out, with the reason in the report
            self.results["skipped"]["faregate"] = f"could not start: {str(exc)[:1500]}"
            log(f"Faregate skipped: {exc}")

    def _launch_litellm(self, ports: nginx.Ports) -> Target | None:
        if not self.want_litellm:
            self.results["skipped"]["litellm"] = "not requested (--no-litellm / smoke mode)"
            return None
        try:
            if not litellm_proxy.installed():
                log(f"installing LiteLLM {litellm_proxy.VERSION} into bench/.venv-litellm (once)")
            self.results["setup"]["litellm_install_s"] = round(litellm_proxy.install(), 1)
            log("starting LiteLLM proxy (1 worker, system-under-test core)")
            return litellm_proxy.launch(ports.json, ports.stream, ports.paced, self.cores.sut)
        except Exception as exc:  # left out, with the reason in the report
            self.results["skipped"]["litellm"] = f"could not start: {str(exc)[:1500]}"
            log(f"LiteLLM skipped: {exc}")
            return None

    def stop(self) -> None:
        for t in [*self.targets, *([self.multi] if self.multi else [])]:
            with contextlib.suppress(Exception):
                t.stop()
        for child in reversed(self.children):
            child.stop()
        if self.stack is not None:
            with contextlib.suppress(Exception):
                gateway.close_stack(self.stack)
        if self.engines is not None:
            self.engines.stop()

    # --- measuring ------------------------------------------------------------------------------------------

    def _record(self, target: Target, scenario: str, value: dict[str, Any]) -> None:
        self.results["scenarios"].setdefault(scenario, {}).setdefault(target.name, []).append(value)

    def _each(self, scenario: str, round_no: int, run: Callable[[Target], dict[str, Any]],
              include_multi: bool = False) -> None:
        pool = list(self.targets) + ([self.multi] if include_multi and self.multi else [])
        # Rotate the order every round so drift on the shared machine hits every target alike.
        shift = round_no % len(pool)
        for target in pool[shift:] + pool[:shift]:
            with step(self.results, scenario, f"{scenario} on {target.name}"):
                self._record(target, scenario, run(target))

    def _load(self, which: str, connections: int) -> Callable[[Target], dict[str, Any]]:
        """A wrk run long enough for this target: wrk counts only requests that finished, so a run must
        last many request latencies or the requests still in flight at the end (up to `connections` of them)
        bias a slow target's req/s down. Six latencies, from the best rate seen so far, keep that under
        ~8% (within the plan's cap, which bounds the run's time: a very slow target gets less, and the
        report's note says so)."""

        def run(t: Target) -> dict[str, Any]:
            best = self.capacity.get((t.name, which), 0.0)
            latency = connections / best if best else 1.0
            seconds = min(max(self.plan.load_s, 6 * latency), max(self.plan.load_s, self.plan.max_load_s))
            out = scenarios.load(t, which, connections, seconds, self.cores)
            self.capacity[(t.name, which)] = max(best, out["rps"])
            return out

        return run

    def measure(self) -> None:
        plan = self.plan
        for t in self.targets + ([self.multi] if self.multi else []):  # warm-up, not recorded
            with step(self.results, "warmup", f"warm-up of {t.name}"):
                # A stream first (some proxies set things up on their first one), then a rough rate for
                # sizing the runs; streams are taken to go at half that until measured.
                scenarios.stream_timing(t, 0.2)
                rate = scenarios.load(t, "json", 4, 1, self.cores)["rps"]
                self.capacity[(t.name, "json")] = rate
                self.capacity[(t.name, "stream")] = rate / 2
        for r in range(plan.rounds):
            log(f"round {r + 1}/{plan.rounds}")
            self.results.setdefault("cpu_available", []).append(
                {str(c): cpu_available(c, 0.5) for c in self.cores.all})
            for c in plan.concurrency:
                self._each(f"chat_c{c}", r, self._load("json", c), include_multi=c > 1)
            sc = plan.stream_concurrency
            self._each(f"stream_c{sc}", r, self._load("stream", sc), include_multi=True)
            self._each("stream_timing_c1", r, lambda t: scenarios.stream_timing(t, plan.stream_s))
            self._each("paced", r, lambda t: scenarios.paced(t, plan.paced_trials, PACED_INTERVAL_MS))
        for t in self.targets + ([self.multi] if self.multi else []):
            if t.process is not None:
                self.results["memory"].setdefault(t.name, {})["after_load"] = t.memory()
        self._soak()
        self._revocation()
        self._pipeline()

    def _faregate(self) -> Target | None:
        return next((t for t in self.targets if t.name == "faregate"), None)

    def _profile(self, fg: Target) -> None:
        """py-spy on the 1-worker gateway while the soak loads it (the sampler's slowdown is brief)."""
        if self.plan.profile_s <= 0 or fg.worker_pids is None:
            return
        if profile.py_spy() is None:
            self.results["skipped"]["profile"] = "py-spy is not installed (pip install py-spy)"
            return
        log(f"profile: py-spy on the 1-worker gateway for {self.plan.profile_s:.0f}s")
        with step(self.results, "profile", "profile"):
            raw = profile.sample(fg.worker_pids()[0], self.plan.profile_s, WORK / "profile.collapsed")
            self.results["profile"] = {**profile.summarize(raw), "seconds": self.plan.profile_s}

    def _soak(self) -> None:
        fg = self._faregate()
        if fg is None or self.plan.soak_s <= 0:
            return
        log(f"soak: Faregate (1 worker) at 16 connections for {self.plan.soak_s:.0f}s")
        with step(self.results, "soak", "soak"):
            out: dict[str, Any] = {}
            thread = threading.Thread(target=lambda: out.update(scenarios.soak(
                fg, "json", 16, self.plan.soak_s, self.cores, every_s=min(10.0, self.plan.soak_s / 4))))
            thread.start()
            try:
                time.sleep(min(3.0, self.plan.soak_s / 4))
                self._profile(fg)
            finally:
                thread.join()
            self.results["soak"] = {**out, "seconds": self.plan.soak_s}

    def _revocation(self) -> None:
        target = self.multi or self._faregate()
        if target is None or self.stack is None or self.ports is None:
            return
        trials = self.plan.revocation_trials
        out: dict[str, Any] = {"target": target.name}
        self.results["revocation"] = out
        log(f"key revocation by the keys contract: {trials} trials on {target.label}")
        with step(self.results, "revocation", "key revocation (contract)"):
            out["contract"] = revocation.by_contract(self.stack, target, trials)
        log(f"key revocation through the keys service API: {trials} trials on {target.label}")
        with step(self.results, "revocation", "key revocation (keys API)"):
            ports = (self.ports.json, self.ports.stream, self.ports.paced)
            with keys_service.running(self.stack, self.cores, ports) as api:
                out["keys_api"] = revocation.by_keys_api(self.stack, target, trials, api)

    def _pipeline(self) -> None:
        if not self.want_pipeline:
            self.results["skipped"]["pipeline"] = "not requested (--no-pipeline / smoke mode)"
            return
        log("billing throughput (bench/billing_bench.py)")
        # These measure whole services on the machine, not one process on one core: they get every core.
        self.results["billing"] = pipeline.run_script("billing_bench", list(self.plan.billing_args),
                                                      self.plan.pipeline_timeout_s, self.cores.all)
        log(f"usage dashboard at {self.plan.usage_rows:,} rows (bench/usage_bench.py)")
        self.results["usage"] = pipeline.run_script("usage_bench", ["--rows", str(self.plan.usage_rows)],
                                                    self.plan.pipeline_timeout_s, self.cores.all)

    def context(self, started: float) -> dict[str, Any]:
        return {
            "mode": self.plan.mode,
            "plan": asdict(self.plan),
            "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - started, 1),
            "machine": {"cpu": cpu_model(), "cores": len(self.cores.all),
                        "python": platform.python_version(), "kernel": platform.release(),
                        "loadavg_at_end": loadavg()},
            "pinning": {"system_under_test": list(self.cores.sut), "load_and_upstream": list(self.cores.load),
                        "pinned": self.cores.pinned},
            "git": _git_rev(),
            "targets": {t.name: t.label for t in self.targets + ([self.multi] if self.multi else [])},
            "upstream": {"model": fixtures.UPSTREAM_MODEL, "stream_chunks": fixtures.STREAM_CHUNKS,
                         "paced_interval_ms": PACED_INTERVAL_MS},
        }


def _git_rev() -> str:
    with contextlib.suppress(Exception):
        head = (ROOT / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            return (ROOT / ".git" / head[5:]).read_text().strip()[:12]
        return head[:12]
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="one short round (~3 minutes)")
    mode.add_argument("--smoke", action="store_true", help="seconds per target; no LiteLLM, no pipeline (CI)")
    ap.add_argument("--no-litellm", action="store_true", help="leave out the LiteLLM peer")
    ap.add_argument("--no-pipeline", action="store_true", help="leave out the billing and usage benches")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the report goes")
    args = ap.parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    bench = Bench(plan, litellm=not (args.no_litellm or args.smoke),
                  pipeline_benches=not (args.no_pipeline or args.smoke))
    started = time.time()
    # This process is the stream client and the revocation poller: it belongs with the load, off the SUT core.
    os.sched_setaffinity(0, bench.cores.load)
    log(f"mode {plan.mode}: system under test on CPU {bench.cores.sut}, "
        f"load and upstream on CPU {bench.cores.load}")
    try:
        bench.start()
        bench.measure()
    except KeyboardInterrupt:
        log("interrupted; stopping")
        return 130
    finally:
        bench.stop()
    results = {"context": bench.context(started), **bench.results}
    md, js = report.write(results, args.out)
    log(f"report: {md} and {js}")
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
