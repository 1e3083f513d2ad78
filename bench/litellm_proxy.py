"""The LiteLLM proxy as the Python peer: installed into its own virtual environment on first use, run with one
worker, a master key (so its auth path runs) and no database, pricing requests with its bundled cost map."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench import fixtures
from bench.system import ROOT, BenchError, Child, children_of, free_port, pin, spawn, wait_port
from bench.targets import Endpoint, Target

VERSION = "1.106.2"  # the newest release that installs from the registry reachable here
VENV = ROOT / "bench" / ".venv-litellm"
MASTER_KEY = "sk-bench-master-key"


def installed() -> bool:
    stamp = VENV / f".installed-{VERSION}"
    return stamp.exists() and (VENV / "bin" / "litellm").exists()


def install() -> float:
    """Create the venv and install litellm[proxy]; returns the seconds it took (0 when already there)."""
    if installed():
        return 0.0
    started = time.monotonic()
    if not (VENV / "bin" / "python").exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    proc = subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                           f"litellm[proxy]=={VERSION}"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"installing litellm {VERSION} failed: {proc.stderr.strip()[-800:]}")
    (VENV / f".installed-{VERSION}").touch()
    return time.monotonic() - started


def _config(path: Path, json_port: int, stream_port: int, paced_port: int) -> None:
    entries = []
    ports = (json_port, stream_port, paced_port)
    for model, port in zip(("bench-json", "bench-stream", "bench-paced"), ports, strict=True):
        entries.append(
            f"  - model_name: {model}\n"
            f"    litellm_params:\n"
            f"      model: openai/{fixtures.UPSTREAM_MODEL}\n"
            f"      api_base: http://127.0.0.1:{port}/v1\n"
            f"      api_key: sk-upstream-bench\n"
        )
    path.write_text(
        "model_list:\n" + "".join(entries)
        + f"general_settings:\n  master_key: {MASTER_KEY}\n"
        + "litellm_settings:\n  telemetry: false\n  drop_params: true\n"
    )


def launch(json_port: int, stream_port: int, paced_port: int, cpus: tuple[int, ...]) -> Target:
    """Start the proxy and return at once (it takes many seconds to import); `wait_ready` before use."""
    from bench.system import WORK

    WORK.mkdir(parents=True, exist_ok=True)
    cfg = WORK / "litellm.yaml"
    _config(cfg, json_port, stream_port, paced_port)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "FAREGATE_"))}
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION",
                "DISABLE_SCHEMA_UPDATE": "True"})
    argv = [str(VENV / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]
    child = spawn("litellm", pin(cpus, argv), env=env)
    target = Target(
        name="litellm", label=f"LiteLLM proxy {VERSION} (1 worker)",
        json=Endpoint(port, "/v1/chat/completions", "bench-json"),
        stream=Endpoint(port, "/v1/chat/completions", "bench-stream"),
        paced=Endpoint(port, "/v1/chat/completions", "bench-paced"),
        api_key=MASTER_KEY, process=child, worker_pids=lambda: _workers(child),
    )
    return target


def wait_ready(target: Target) -> None:
    assert target.process is not None
    try:
        wait_port(target.json.port, 120, target.process.proc, "litellm")
        _wait_ready(target.process, target.json.port)
    except BaseException:
        target.process.stop()
        raise


def _workers(child: Child) -> list[int]:
    return [child.pid, *children_of(child.pid)]


def _wait_ready(child: Child, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    body = fixtures.request_body("bench-json", stream=False)
    last = ""
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise BenchError(f"litellm exited with {child.proc.returncode}: {child.log_tail()}")
        try:
            headers = {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"}
            resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=body, timeout=10,
                              headers=headers)
            if resp.status_code == 200 and "relays" in resp.text:
                return
            last = f"HTTP {resp.status_code}: {resp.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.3)
    raise BenchError(f"litellm not answering within {timeout:.0f}s ({last}); log: {child.log_tail()}")
