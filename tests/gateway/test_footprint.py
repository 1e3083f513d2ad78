"""A gateway worker's memory budget (issue 10: under 100 MB under load) starts with what it imports: the
libraries only other services need stay out of it."""

from __future__ import annotations

import subprocess
import sys


def test_a_gateway_worker_imports_neither_httpx_nor_asyncpg() -> None:
    # httpx (with its CLI's rich and click, ~11 MB) is replaced by upstream_http for the internal calls; asyncpg
    # (~5 MB) is imported only by services that open a database pool.
    probe = ("import sys, services.gateway.app; "
             "print(sorted(m for m in ('httpx', 'asyncpg', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
