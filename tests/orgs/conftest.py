"""Organisations are served by the keys service: its app, logged-in people and the event tap come from
there."""

from __future__ import annotations

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
