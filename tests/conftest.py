"""Test isolation on shared engines: every pytest session gets its own database, NATS namespace (stream names and
subjects) and Redis key prefix, so several sessions (and developers) can run at once against one Postgres, Redis
and NATS. Engines are real: `make test` starts private ones when none answers at the configured URLs.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest

from faregate import stack
from faregate.cli import load_all_configs, migrate_all
from shared import config
from shared.config import CommonSettings
from shared.runtime import Resources, open_resources


@pytest.fixture(scope="session")
def common() -> Iterator[CommonSettings]:
    load_all_configs()
    tag = secrets.token_hex(4)
    base = config.load(CommonSettings)
    dbname = f"fg_test_{tag}"
    data_dir = tempfile.mkdtemp(prefix=f"faregate-test-{tag}-")
    overrides = {
        "FAREGATE_DATABASE_URL": stack.with_database(base.database_url, dbname),
        "FAREGATE_NAMESPACE": f"t{tag}",
        "FAREGATE_DATA_DIR": data_dir,
        "FAREGATE_LOG_FORMAT": "json",
    }
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    settings = config.load(CommonSettings)
    asyncio.run(migrate_all(settings))
    try:
        yield settings
    finally:
        if not os.environ.get("FAREGATE_TEST_KEEP"):
            asyncio.run(
                stack.drop_namespace(settings.database_url, settings.redis_url, settings.nats_url,
                                     settings.namespace)
            )
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
async def resources(common: CommonSettings) -> AsyncIterator[Resources]:
    """Postgres pool, Redis and NATS (with the streams declared) for one test."""
    async with open_resources(common, "tests") as res:
        yield res
