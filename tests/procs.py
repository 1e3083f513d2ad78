"""Run real service processes (`faregate <service>`) on free ports for end-to-end and multi-process tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and never one this test process handed out before. The kernel may give the
    same free port to two calls in a row, and two services started on one port both bind it (granian sets
    SO_REUSEPORT) and silently share its connections: a gateway's upstream calls then reached the usage service
    (CI, 2026-12-05, tests/test_paid_request.py)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass
class ServiceProcess:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def start(
    name: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    ready_path: str = "/healthz",
    timeout: float = 60,
) -> ServiceProcess:
    """Start `faregate <name>` with FAREGATE_<NAME>_PORT on a free port; wait until `ready_path` answers 200."""
    port = port or free_port()
    upper = name.upper().replace("-", "_")
    full_env = {**os.environ, f"FAREGATE_{upper}_PORT": str(port), **(env or {})}
    log_fd, log_name = tempfile.mkstemp(prefix=f"faregate-{name}-", suffix=".log")
    proc = subprocess.Popen(
        [sys.executable, "-m", "faregate.cli", name],
        env=full_env,
        stdout=log_fd,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    os.close(log_fd)
    sp = ServiceProcess(name, port, proc, Path(log_name))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{sp.log()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(sp.url + ready_path, timeout=1).status_code == 200:
                return sp
        time.sleep(0.1)
    sp.kill()
    raise RuntimeError(f"{name} not ready within {timeout}s:\n{sp.log()[-4000:]}")


@contextlib.contextmanager
def running(name: str, env: dict[str, str] | None = None, **kw: object) -> Iterator[ServiceProcess]:
    sp = start(name, env, **kw)  # type: ignore[arg-type]
    try:
        yield sp
    finally:
        sp.stop()
