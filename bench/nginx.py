"""nginx from Debian's packages in two roles: the near-free upstream, and the reverse-proxy hop (the floor).

The upstream listens on two ports, one answering every POST with the fixed chat completion and one with the
fixed 20-chunk SSE stream, both from files (a `return` body is capped at 4,096 bytes). nginx refuses POST on
static files, so each POST is answered `405`, which `error_page 405 =200` turns into an internal GET of the
file. The paced stream (chunks spaced in time, to show none is held back) comes from `bench.paced_upstream`
instead."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench import fixtures
from bench.system import WORK, Child, Cores, binary, free_port, pin, spawn, wait_port

_COMMON = """
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp/body;
  proxy_temp_path {dir}/tmp/proxy;
  fastcgi_temp_path {dir}/tmp/fastcgi;
  uwsgi_temp_path {dir}/tmp/uwsgi;
  scgi_temp_path {dir}/tmp/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  tcp_nodelay on;
  server_tokens off;
{servers}
}}
"""

_UPSTREAM_SERVER = """
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location ~ /chat/completions$ {{ error_page 405 =200 /{file}; return 405; }}
    location = /{file} {{ internal; root {www}; types {{ }} default_type {ctype}; }}
  }}
"""

_HOP_SERVER = """
  upstream up_{port} {{ server 127.0.0.1:{to}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://up_{port};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering {buffering};
    }}
  }}
"""


@dataclass
class Ports:
    json: int
    stream: int
    paced: int


def _write_conf(name: str, servers: str) -> Path:
    folder = WORK / name
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # Workers run as an unprivileged user when nginx starts as root; they must read the files.
    for path in (WORK, folder):
        path.chmod(0o755)
    user = "user root;" if os.geteuid() == 0 else ""
    conf = folder / "nginx.conf"
    conf.write_text(_COMMON.format(dir=folder, user=user, servers=servers))
    return conf


def _start(name: str, conf: Path, cpus: tuple[int, ...], ports: list[int]) -> Child:
    child = spawn(name, pin(cpus, [binary("nginx"), "-c", str(conf), "-p", str(conf.parent)]))
    for port in ports:
        wait_port(port, 10, child.proc, name)
    return child


def start_upstream(cores: Cores) -> tuple[Child, Ports]:
    www = WORK / "upstream" / "www"
    www.mkdir(parents=True, exist_ok=True)
    www.chmod(0o755)
    (www / "completion.json").write_bytes(fixtures.completion_json())
    (www / "stream.sse").write_bytes(fixtures.stream_body())
    ports = Ports(json=free_port(), stream=free_port(), paced=0)
    servers = _UPSTREAM_SERVER.format(port=ports.json, file="completion.json", www=www,
                                      ctype="application/json")
    servers += _UPSTREAM_SERVER.format(port=ports.stream, file="stream.sse", www=www,
                                       ctype="text/event-stream")
    conf = _write_conf("upstream", servers)
    return _start("nginx-upstream", conf, cores.load, [ports.json, ports.stream]), ports


def start_hop(cores: Cores, upstream: Ports) -> tuple[Child, Ports]:
    """One nginx worker on the system-under-test core, proxying each upstream port with keep-alive."""
    ports = Ports(json=free_port(), stream=free_port(), paced=free_port())
    servers = _HOP_SERVER.format(port=ports.json, to=upstream.json, buffering="on")
    # Streams are forwarded as they arrive, as a streaming-aware proxy must.
    servers += _HOP_SERVER.format(port=ports.stream, to=upstream.stream, buffering="off")
    servers += _HOP_SERVER.format(port=ports.paced, to=upstream.paced, buffering="off")
    conf = _write_conf("hop", servers)
    return _start("nginx-hop", conf, cores.sut, [ports.json, ports.stream, ports.paced]), ports
