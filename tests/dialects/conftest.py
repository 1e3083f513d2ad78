"""The mock upstream and the test relay (tests/dialects/relay.py) as real processes for SDK round trips."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import ServiceProcess, free_port, start

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def mock_process() -> Iterator[ServiceProcess]:
    proc = start("mock-upstream")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def relay_url(mock_process: ServiceProcess) -> Iterator[str]:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="faregate-test-relay-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ws",
            "tests.dialects.relay:create_app",
        ],
        cwd=ROOT,
        env={**os.environ, "MOCK_URL": mock_process.url},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(url + "/", timeout=1)
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the test relay did not start:\n{Path(log.name).read_text()[-4000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        Path(log.name).unlink(missing_ok=True)
