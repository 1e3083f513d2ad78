"""wrk (Debian's) as the load generator: a Lua script POSTs the chat body and prints the summary as JSON."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.system import WORK, BenchError, Cores, binary, pin

_SCRIPT = r"""
local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end
wrk.method = "POST"
wrk.body = slurp(os.getenv("BENCH_BODY_FILE"))
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_API_KEY")
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"connect\":%d,\"read\":%d,\"write\":%d," ..
    "\"status\":%d,\"timeout\":%d,\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"max_us\":%d,\"mean_us\":%.1f}\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # connect/read/write/timeout errors and non-2xx/3xx answers
    non2xx: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _script_path() -> Path:
    path = WORK / "post.lua"
    WORK.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != _SCRIPT:
        path.write_text(_SCRIPT)
    return path


def run(url: str, body: bytes, *, api_key: str, connections: int, seconds: float, cores: Cores,
        timeout_s: int = 10) -> WrkResult:
    body_file = WORK / f"body-{hashlib.sha1(body).hexdigest()[:12]}.json"
    if not body_file.exists():
        body_file.write_bytes(body)
    # One thread: the load core also runs the upstream, and one wrk thread drives well over 100k req/s.
    argv = pin(cores.load, [binary("wrk"), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                            f"--timeout={timeout_s}s", "-s", str(_script_path()), url])
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_API_KEY": api_key}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + timeout_s + 30,
                          check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        detail = proc.stderr.strip()[-500:] or proc.stdout[-500:]
        raise BenchError(f"wrk failed ({proc.returncode}): {detail}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    secs = raw["duration_us"] / 1e6
    failures = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"] + raw["status"]
    good = raw["requests"] - raw["status"]
    return WrkResult(
        requests=raw["requests"],
        seconds=round(secs, 3),
        rps=round(good / secs, 1) if secs else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=failures,
        non2xx=raw["status"],
    )
