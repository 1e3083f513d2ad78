"""The rest of the pipeline, measured by the scripts the billing and usage services keep beside this one
(`bench/billing_bench.py`, `bench/usage_bench.py`): each is run as its own process and its JSON output kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.system import ROOT, pin


def _last_json(text: str) -> Any:
    """The JSON document a script printed last (it may have logged before it)."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    for start in (i for i in range(len(text) - 1, -1, -1) if text[i] in "{["):
        try:
            return json.loads(text[start:])
        except ValueError:
            continue
    return None


def run_script(module: str, args: list[str], timeout_s: float, cpus: tuple[int, ...],
               env: dict[str, str] | None = None) -> dict[str, Any]:
    path = ROOT / "bench" / f"{module}.py"
    if not path.exists():
        return {"status": "absent", "note": f"bench/{module}.py does not exist yet"}
    started = time.monotonic()
    try:
        proc = subprocess.run(pin(cpus, [sys.executable, "-m", f"bench.{module}", *args]), cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout_s, check=False,
                              env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "note": f"did not finish within {timeout_s:.0f}s", "args": args}
    out: dict[str, Any] = {"status": "ok" if proc.returncode == 0 else "failed", "args": args,
                           "seconds": round(time.monotonic() - started, 1)}
    parsed = _last_json(proc.stdout)
    if parsed is not None:
        out["result"] = parsed
    if proc.returncode != 0 or parsed is None:
        out["output_tail"] = (proc.stdout[-1500:] + proc.stderr[-1500:]).strip()
    return out
