"""Where a gateway worker's CPU goes under the bench's load, from py-spy samples (PyPI `py-spy`).

`make bench` calls `sample` + `summarize` on the 1-worker gateway during a load run, and the report lists the
result, so a missed target comes with what limits it. By hand, for a longer look or at streams:

    python -m bench.profile [--seconds 10] [--connections 16] [--stream]

brings up the same upstream, private Redis/NATS and 1-worker gateway as `make bench`, drives it with wrk,
prints the summary and leaves the collapsed stacks (for a flame graph) in bench/.work/profile.collapsed.

Two views of the same samples: self time by package (whose code the CPU was running: the framework, the HTTP
client, the event loop, ours), and time by hot-path step (the deepest Faregate function on the stack, so
`relay.open_upstream` includes the HTTP client work it started).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from bench import gateway, wrk
from bench.system import WORK, BenchError

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")
_OURS = ("services/", "shared/")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def sample(pid: int, seconds: float, out: Path) -> Path:
    """Record `seconds` of stacks of process `pid` (on-CPU only) into collapsed-stack text."""
    spy = py_spy()
    if spy is None:
        raise BenchError("py-spy not installed (`pip install py-spy` into the project's virtualenv)")
    proc = subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                           "--rate", "200", "--nonblocking", "--format", "raw", "--output", str(out)],
                          capture_output=True, text=True, check=False, timeout=seconds + 30)
    if proc.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return out


def _package(file: str) -> str:
    if file.startswith(_OURS):
        return "/".join(file.split("/")[:2]) if file.startswith("services/") else "shared"
    if file.startswith("<"):
        return "python"
    head = file.split("/", 1)[0]
    return head.removesuffix(".py")


def _step(frames: list[str]) -> str:
    """The deepest frame of our own code: the hot-path step this sample belongs to."""
    for frame in reversed(frames):
        m = _FRAME.match(frame)
        if m and m.group("file").startswith(_OURS):
            return f"{m.group('func')} ({m.group('file')})"
    return "outside our code (server, framework, event loop)"


def summarize(collapsed: Path, top: int = 12) -> dict[str, Any]:
    by_package: collections.Counter[str] = collections.Counter()
    by_step: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        m = _FRAME.match(frames[-1])
        by_package[_package(m.group("file")) if m else "other"] += n
        by_step[_step(frames)] += n
        total += n

    def shares(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [{"name": k, "share_pct": round(100 * v / total, 1)} for k, v in counter.most_common(top)]

    return {"samples": total, "by_package": shares(by_package), "by_step": shares(by_step)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--stream", action="store_true", help="profile streaming requests")
    args = ap.parse_args()
    with gateway.standalone() as (cores, _, stack, secret):
        target = gateway.start(stack, secret, workers=1, cpus=cores.sut, name="faregate", label="gateway")
        try:
            assert target.worker_pids is not None
            which = "stream" if args.stream else "json"
            endpoint = getattr(target, which)
            result: dict[str, object] = {}

            def load() -> None:
                result["wrk"] = wrk.run(endpoint.url, target.body(which), api_key=target.api_key,
                                        connections=args.connections, seconds=args.seconds + 2, cores=cores)

            thread = threading.Thread(target=load)
            thread.start()
            raw = sample(target.worker_pids()[0], args.seconds, WORK / "profile.collapsed")
            thread.join()
        finally:
            target.stop()
    print(f"load: {result.get('wrk')}")
    summary = summarize(raw)
    for view in ("by_package", "by_step"):
        print(f"{view} ({summary['samples']} samples):")
        for row in summary[view]:
            print(f"  {row['share_pct']:5.1f}%  {row['name']}")
    print(f"collapsed stacks: {raw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
