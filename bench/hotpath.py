"""A/B the gateway's hot path: CPU per request and added latency of gateway variants, in one run.

The full bench takes 15 minutes; working on the request path wants a number in one. This brings up the bench's
upstream, private Redis/NATS and seeded stack once, then, round after round (the order rotating), starts each
variant's 1-worker gateway on the system-under-test core and measures it with wrk:

    python -m bench.hotpath [--rounds 3] [--seconds 4] [--floor] [--variant NAME=ENV=VALUE[,ENV=VALUE]] ...

With no --variant it measures the gateway as configured. `BENCH_CHECKOUT=<dir>` in a variant runs another
checkout's gateway (e.g. `git worktree add /tmp/base HEAD~1`, then `--variant base=BENCH_CHECKOUT=/tmp/base
--variant new=`): two versions of the code, measured in one run. A variant is a set of environment variables for the
gateway process (e.g. `--variant base= --variant nofast=FAREGATE_GATEWAY_FAST_PATH=false`). Printed per
variant: median CPU µs/request at 16 connections, req/s, and p50 added over the direct upstream at 1
connection, for chat and for streams. `--floor` adds bench/floor.py's minimal Python relays (ASGI and RSGI on
granian, one upstream call, nothing else) to every round: what no Python gateway can go below here.
"""

from __future__ import annotations

import argparse
import statistics

from bench import floor, gateway, scenarios
from bench.targets import direct


def _variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition("=")
    env = dict(item.split("=", 1) for item in rest.split(",") if item)
    return name, env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--stream", action="store_true", help="also measure streams (16 connections, and c1 TTFB)")
    ap.add_argument("--floor", action="store_true", help="also measure the minimal relays of bench/floor.py")
    args = ap.parse_args()
    variants = [_variant(v) for v in args.variant] or [("gateway", {})]
    floors = ["asgi", "rsgi"] if args.floor else []
    results: dict[str, dict[str, list[float]]] = {name: {} for name, _ in variants}
    results.update({f"floor-{i}": {} for i in floors})
    with gateway.standalone() as (cores, ports, stack, secret):
        base = direct(ports.json, ports.stream, ports.paced)
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            d1 = scenarios.load(base, "json", 1, args.seconds, cores)["p50_ms"]
            for name, env in order + [(f"floor-{i}", {}) for i in floors]:
                if name.startswith("floor-"):
                    upstreams = (ports.json, ports.stream, ports.paced)
                    target = floor.start(name.removeprefix("floor-"), upstreams, cores.sut)
                else:
                    target = gateway.start(stack, secret, workers=1, cpus=cores.sut, name=name, label=name,
                                           extra_env=env)
                try:
                    scenarios.load(target, "json", 16, 1.0, cores)  # warm-up
                    c16 = scenarios.load(target, "json", 16, args.seconds, cores)
                    c1 = scenarios.load(target, "json", 1, args.seconds, cores)
                    row = results[name]
                    row.setdefault("cpu_us", []).append(c16["cpu_us_per_req"] or 0)
                    row.setdefault("rps_c16", []).append(c16["rps"])
                    row.setdefault("added_p50_ms", []).append(c1["p50_ms"] - d1)
                    row.setdefault("errors", []).append(c16["errors"] + c1["errors"])
                    if args.stream:
                        s16 = scenarios.load(target, "stream", 16, args.seconds, cores)
                        row.setdefault("stream_cpu_us", []).append(s16["cpu_us_per_req"] or 0)
                        row.setdefault("streams_s", []).append(s16["rps"])
                        t = scenarios.stream_timing(target, args.seconds)
                        row.setdefault("ttfb_p50_ms", []).append(t.get("ttfb_p50_ms", 0.0))
                finally:
                    target.stop()
            print(f"round {r + 1}: " + "; ".join(
                f"{n} {results[n]['cpu_us'][-1]:.0f}µs/req {results[n]['rps_c16'][-1]:.0f}/s"
                for n in results), flush=True)
        print()
        keys = sorted({k for row in results.values() for k in row})
        print("variant".ljust(16) + "".join(k.rjust(14) for k in keys))
        for name, row in results.items():
            print(name.ljust(16) + "".join(f"{statistics.median(row[k]):14.3f}" if k in row else " " * 14
                                           for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
