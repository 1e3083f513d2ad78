"""`make run` on a machine where no engine answers: the stack starts its own Postgres, Redis and NATS (here on
non-standard ports, beside the ones already running), migrates, seeds, and the printed curl line returns a
completion. Then Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from faregate import stack
from tests.procs import free_port

ROOT = Path(__file__).resolve().parent.parent


def _engine_env(tmp_path: Path) -> dict[str, str]:
    pg, rd, nt = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAREGATE_")}
    env.update(
        {
            "FAREGATE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{pg}/faregate",
            "FAREGATE_REDIS_URL": f"redis://127.0.0.1:{rd}/0",
            "FAREGATE_NATS_URL": f"nats://127.0.0.1:{nt}",
            "FAREGATE_DATA_DIR": str(tmp_path / "data"),
        }
    )
    return env


def _down(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "faregate.cli", "stack", "down"], env=env, check=False, cwd=ROOT, timeout=60
    )


def test_stack_up_starts_private_engines_on_free_ports(tmp_path: Path) -> None:
    env = _engine_env(tmp_path)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "faregate.cli", "stack", "up"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=True,
        )
        assert "'postgres': 'started'" in out.stdout and "'redis': 'started'" in out.stdout
        assert "'nats': 'started'" in out.stdout
        for url, port in (("DATABASE", 5432), ("REDIS", 6379), ("NATS", 4222)):
            assert stack.answers(stack.endpoint(env[f"FAREGATE_{url}_URL"], port))
        # A second `up` uses what now answers instead of starting another.
        again = subprocess.run(
            [sys.executable, "-m", "faregate.cli", "stack", "up"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert again.stdout.count("external") == 3
    finally:
        _down(env)
    time.sleep(0.5)
    assert not stack.answers(stack.endpoint(env["FAREGATE_REDIS_URL"], 6379))


def test_dev_prints_a_curl_line_that_returns_a_completion(tmp_path: Path) -> None:
    env = _engine_env(tmp_path)
    for svc in ("GATEWAY", "KEYS", "BILLING", "USAGE", "NOTIFIER", "MOCK_UPSTREAM"):
        env[f"FAREGATE_{svc}_PORT"] = str(free_port())
    env["FAREGATE_KEYS_URL"] = f"http://127.0.0.1:{env['FAREGATE_KEYS_PORT']}"
    env["FAREGATE_BILLING_URL"] = f"http://127.0.0.1:{env['FAREGATE_BILLING_PORT']}"
    env["FAREGATE_USAGE_URL"] = f"http://127.0.0.1:{env['FAREGATE_USAGE_PORT']}"
    log = tmp_path / "dev.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "faregate.cli", "dev"],
            env=env,
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        curl = None
        while time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"^\s*(curl -s .*)$", log.read_text(errors="replace"), re.M)
            if m:
                curl = m.group(1)
                break
            time.sleep(0.5)
        assert curl, f"no curl line printed:\n{log.read_text(errors='replace')[-6000:]}"
        out = subprocess.run(shlex.split(curl), capture_output=True, timeout=60, check=True)
        body = msgspec.json.decode(out.stdout)
        assert body["object"] == "chat.completion", body
        assert body["choices"][0]["message"]["content"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("faregate dev did not stop within 60 s of Ctrl-C")
        _down(env)
    assert "[dev] stopped" in log.read_text(errors="replace")
