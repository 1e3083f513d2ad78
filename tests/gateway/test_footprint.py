"""A gateway worker's memory budget (issue 10: under 100 MB under load) starts with what it imports: the
libraries only other services need stay out of it."""

from __future__ import annotations

import subprocess
import sys

# What `faregate gateway` holds when granian forks its worker (the CLI, with serving stubbed out), then what the
# worker adds: the app module and the app built (not started: no engines needed).
_SERVED = """
import sys
from faregate import cli
cli.serve_service = lambda name: None
cli.main(["gateway"])
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from shared import config
from shared.config import CommonSettings
create_app(config.load(GatewaySettings), config.load(CommonSettings))
print(sorted(m for m in sys.argv[1:] if m in sys.modules))
"""


def _imported(probe: str, *modules: str) -> str:
    out = subprocess.run([sys.executable, "-c", probe, *modules], capture_output=True, text=True, check=True,
                         timeout=60)
    return out.stdout.strip() + out.stderr


def test_a_gateway_worker_imports_neither_httpx_nor_asyncpg() -> None:
    # httpx (with its CLI's rich and click, ~11 MB) is replaced by upstream_http for the internal calls; asyncpg
    # (~5 MB) is imported only by services that open a database pool.
    probe = ("import sys, services.gateway.app; "
             "print(sorted(m for m in ('httpx', 'asyncpg', 'rich') if m in sys.modules))")
    assert _imported(probe) == "[]"


def test_a_served_gateway_worker_holds_no_other_services_libraries() -> None:
    # The CLI imports only the named service's commands (billing's brought asyncpg into every gateway worker);
    # Litestar's pydantic and attrs plugins are left out (9 MB when the test extras install those); tiktoken
    # waits for the first request that needs counting.
    unwanted = ("asyncpg", "httpx", "rich", "aiosmtplib", "pydantic", "attrs", "tiktoken",
                "services.billing.commands")
    assert _imported(_SERVED, *unwanted) == "[]"
