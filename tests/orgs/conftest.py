"""Organisations are served by the keys service: its app, logged-in people and the event tap come from
there; the allowance at the gateway (test_org_allowance.py) uses the gateway's fixtures."""

from __future__ import annotations

from tests.gateway.conftest import (  # noqa: F401 (fixtures, re-exported for pytest)
    gateway,
    gateway_settings,
    mock_upstream,
    world,
)
from tests.keys.conftest import (  # noqa: F401 (fixtures, re-exported for pytest)
    admin,
    app,
    catalog_loaded,
    client,
    ctx,
    fresh_login_counters,
    keys_settings,
    tap,
)
