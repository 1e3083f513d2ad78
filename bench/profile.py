"""Profile Faregate's gateway under the bench's load: where does a request's time go?

    python -m bench.profile [--seconds 10] [--connections 16] [--stream] [--idle]

Brings up the same upstream, private Redis/NATS and 1-worker gateway as `make bench`, drives it with wrk, and
samples the worker with py-spy (PyPI: `pip install py-spy`). Writes the collapsed stacks (for a flame graph)
under bench/.work/, and prints the functions holding the most samples. `--idle` includes time the event
loop spends waiting (off-CPU), which is what shows a request waiting on something rather than computing.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from bench import engines, gateway, nginx, wrk
from bench.system import WORK, BenchError, Cores, ensure_debian_tools, free_port, pin, spawn, wait_port


def _py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise BenchError("py-spy not found: `pip install py-spy` into the project's virtualenv")
    return found


def top(collapsed: Path, n: int = 25, inclusive: bool = False) -> list[tuple[str, int, float]]:
    """Time per frame from py-spy's collapsed stacks: (frame, samples, share), self time or inclusive."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        for frame in set(frames) if inclusive else frames[-1:]:
            own[frame] += samples
    return [(frame, c, c / total) for frame, c in own.most_common(n)] if total else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--stream", action="store_true", help="profile streaming requests")
    ap.add_argument("--idle", action="store_true", help="include off-CPU (waiting) samples")
    args = ap.parse_args()
    ensure_debian_tools()
    cores = Cores.detect()
    spy = _py_spy()
    up, ports = nginx.start_upstream(cores)
    ports.paced = free_port()
    paced = spawn("paced-upstream", pin(cores.load, [sys.executable, "-m", "bench.paced_upstream",
                                                     str(ports.paced), "20"]))
    eng = engines.start(cores)
    stack = gateway.open_stack(eng.redis_url, eng.nats_url)
    target = None
    try:
        wait_port(ports.paced, 15, paced.proc, "paced upstream")
        secret = gateway.seed(stack, ports.json, ports.stream, ports.paced)
        target = gateway.start(stack, secret, workers=1, cpus=cores.sut, name="faregate", label="gateway")
        assert target.worker_pids is not None
        worker = target.worker_pids()[0]
        which = "stream" if args.stream else "json"
        result: dict[str, object] = {}

        def load() -> None:
            endpoint = getattr(target, which)
            result["wrk"] = wrk.run(endpoint.url, target.body(which), api_key=target.api_key,
                                    connections=args.connections, seconds=args.seconds + 2, cores=cores)

        thread = threading.Thread(target=load)
        thread.start()
        raw = WORK / "profile.collapsed"
        subprocess.run([spy, "record", "--pid", str(worker), "--duration", str(args.seconds), "--rate", "250",
                        "--nonblocking", *(["--idle"] if args.idle else []), "--format", "raw",
                        "--output", str(raw)], check=True, capture_output=True)
        thread.join()
        print(f"load: {result.get('wrk')}")
        print(f"collapsed stacks (feed to flamegraph.pl or speedscope): {raw}")
        print("self time by frame:")
        for frame, samples, share in top(raw):
            print(f"  {100 * share:5.1f}%  {samples:6d}  {frame}")
        print("inclusive time by frame:")
        for frame, samples, share in top(raw, inclusive=True):
            print(f"  {100 * share:5.1f}%  {samples:6d}  {frame}")
        return 0
    finally:
        if target is not None:
            target.stop()
        gateway.close_stack(stack)
        eng.stop()
        paced.stop()
        up.stop()


if __name__ == "__main__":
    raise SystemExit(main())
