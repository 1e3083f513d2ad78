"""Postgres: a pool factory, the per-service migration runner and the processed-events (idempotency) helper.

Each service owns one schema (its name) and its own forward-only plain-SQL migrations in
`services/<name>/migrations/NNNN_name.sql`. No service reads another's schema.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import asyncpg

log = logging.getLogger("faregate.db")

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_ID = 0x46617265  # "Fare": one advisory lock for all migrations, so two migrate runs never interleave


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=30)
    assert pool is not None
    return pool


def migration_files(folder: Path) -> list[tuple[int, str, Path]]:
    out = []
    for path in sorted(folder.glob("*.sql")):
        m = _MIGRATION.match(path.name)
        if not m:
            raise ValueError(f"migration file {path} must be named NNNN_name.sql")
        out.append((int(m.group(1)), path.stem, path))
    versions = [v for v, _, _ in out]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration numbers in {folder}")
    return out


async def migrate(conn: asyncpg.Connection, schema: str, folder: Path) -> list[str]:
    """Apply `folder`'s migrations to `schema` in order, each in its own transaction; returns those applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')}
        for version, name, path in migration_files(folder):
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
                await conn.execute(path.read_text())
                await conn.execute(
                    f'INSERT INTO "{schema}".schema_migrations (version, name) VALUES ($1, $2)', version, name
                )
            log.info("migration applied", extra={"schema": schema, "migration": name})
            applied.append(f"{schema}/{name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied


async def ensure_database(dsn: str) -> None:
    """Create the database named in `dsn` if it does not exist (dev and tests; production creates it)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(dsn)
    dbname = parts.path.lstrip("/") or "postgres"
    admin = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", dbname)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        await conn.close()


async def claim_events(
    conn: asyncpg.Connection, schema: str, consumer: str, event_ids: Iterable[str]
) -> set[str]:
    """Record event ids as processed by `consumer`; return those that were new. Call inside the transaction that
    applies their effects, so the effect and the claim commit (or roll back) together.

    Needs, in the service's schema:
      CREATE TABLE processed_events (consumer text, event_id text, processed_at timestamptz DEFAULT now(),
                                     PRIMARY KEY (consumer, event_id));
    """
    rows = await conn.fetch(
        f'INSERT INTO "{schema}".processed_events (consumer, event_id)'
        " SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        list(event_ids),
    )
    return {r["event_id"] for r in rows}
