"""The machine: tools installed on demand, CPU pinning, process memory, ports and child processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Scratch space for configs, logs and data of one run (a second run at once needs its own: BENCH_WORK_DIR).
WORK = Path(os.environ.get("BENCH_WORK_DIR") or ROOT / "bench" / ".work")


class BenchError(RuntimeError):
    """A target or tool could not be brought up; the message says which and why."""


_TOOLS = (("nginx", "nginx"), ("wrk", "wrk"), ("redis-server", "redis-server"))  # Debian package, binary


def ensure_debian_tools() -> None:
    """nginx, wrk and redis-server come from Debian's packages, installed the first time they are needed."""
    missing = [pkg for pkg, binary in _TOOLS if not _which(binary)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise BenchError(f"need {' '.join(missing)}: run `sudo apt-get install -y {' '.join(missing)}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True,
                   env=env, stdout=subprocess.DEVNULL)


def _which(binary: str) -> str | None:
    return shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.exists()), None)


def binary(name: str) -> str:
    found = _which(name)
    if not found:
        raise BenchError(f"{name} not found")
    return found


@dataclass(frozen=True)
class Cores:
    """Which CPUs the system under test gets and which the load generator and the upstream get."""

    sut: tuple[int, ...]
    load: tuple[int, ...]

    @classmethod
    def detect(cls) -> Cores:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(sut=tuple(cpus), load=tuple(cpus))
        return cls(sut=(cpus[0],), load=tuple(cpus[1:]))

    @property
    def all(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.sut) | set(self.load)))

    @property
    def pinned(self) -> bool:
        return not set(self.sut) & set(self.load)


def pin(cpus: Sequence[int], argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", ",".join(str(c) for c in cpus), *argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what or 'process'} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{what or 'process'} did not listen on port {port} within {timeout:.0f}s")


@dataclass
class Child:
    """A process the bench started (in its own session, so its whole tree stops with it)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def spawn(name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> Child:
    WORK.mkdir(parents=True, exist_ok=True)
    log_path = WORK / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return Child(name, proc, log_path)


# --- memory -------------------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc), depth first."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    stack = list(kids.get(pid, []))
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MB (0 if it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mb(pid: int) -> float:
    return rss_mb(pid) + sum(rss_mb(p) for p in children_of(pid))


def comm(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


_SPIN = """
import time
wall, cpu = time.perf_counter(), time.process_time()
while time.perf_counter() - wall < SECONDS:
    pass
print((time.process_time() - cpu) / (time.perf_counter() - wall))
"""


def cpu_available(cpu: int, seconds: float = 1.0) -> float:
    """The share of one CPU a busy process actually gets (1.0 = all of it): on a shared machine, what other
    people's processes leave for the system under test."""
    import sys

    out = subprocess.run(pin((cpu,), [sys.executable, "-c", _SPIN.replace("SECONDS", str(seconds))]),
                         capture_output=True, text=True, check=False, timeout=seconds + 30).stdout
    try:
        return round(float(out.strip()), 3)
    except ValueError:
        return 0.0


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def loadavg() -> tuple[float, float, float]:
    a, b, c = os.getloadavg()
    return (round(a, 2), round(b, 2), round(c, 2))


def listeners(port: int) -> list[int]:
    """Pids of the processes holding a listening socket on `port`: a pre-fork server's workers."""
    out = subprocess.run(["ss", "-tlnpH", f"( sport = :{port} )"], capture_output=True, text=True,
                         check=False).stdout
    return sorted({int(part.split(",", 1)[0]) for part in out.split("pid=")[1:]})


def socket_owners(server_port: int) -> dict[int, int]:
    """Client-side local port -> pid of the server process holding the other end (from `ss`)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{server_port} )"],
                         capture_output=True, text=True, check=False).stdout
    owners: dict[int, int] = {}
    for line in out.splitlines():
        parts = line.split()
        # Recv-Q Send-Q Local:Port Peer:Port users:(("name",pid=N,fd=M))
        if len(parts) < 5 or "pid=" not in line:
            continue
        peer_port = int(parts[3].rsplit(":", 1)[1])
        pid = int(line.split("pid=", 1)[1].split(",", 1)[0])
        owners[peer_port] = pid
    return owners
