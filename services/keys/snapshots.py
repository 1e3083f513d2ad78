"""What gateways see: key snapshots and the catalog in Redis, and the events that tell every worker at once.

Order matters: Redis is written first, then the event is published, so a gateway that reacts to the event by
reading Redis (rather than the snapshot the event carries) never reads the old state.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import Counter
from redis.exceptions import RedisError

from services.keys.context import Ctx
from services.keys.errors import CacheUnavailable
from shared import catalog as cat
from shared import events as ev

log = logging.getLogger("faregate.keys.snapshots")

KEY_SNAPSHOTS = Counter("faregate_keys_snapshots_published_total", "Key snapshots written and announced",
                        ["status"])
CATALOG_VERSIONS = Counter("faregate_keys_catalog_versions_total", "Catalog snapshots published")

_SET_CATALOG = (Path(__file__).with_name("lua") / "set_catalog.lua").read_text()
_encode = msgspec.json.Encoder().encode


def key_snapshot(row: Any) -> ev.KeySnapshot:
    """The snapshot of a key's current secret, from a row selected with repo.KEY_COLUMNS."""
    return ev.KeySnapshot(
        key_id=row["id"],
        key_hash=row["key_hash"],
        account_id=row["account_id"],
        user_id=row["user_id"],
        status=row["status"],
        group=row["group"],
        quota_micros=row["quota_micros"],
        models=tuple(row["models"]),
        ip_allow=tuple(row["ip_allow"]),
        expires_at=row["expires_at"],
        rpm_limit=row["rpm_limit"],
        tpm_limit=row["tpm_limit"],
        concurrency_limit=row["concurrency_limit"],
        account_status=row["account_status"],
        # An organisation's key: the org pays (account_id), the member holds it (user_id).
        org_id=row["account_id"] if row["account_kind"] == "org" else None,
        allowance_micros=row["allowance_micros"] or 0,
        allowance_tz=row["org_time_zone"] or "UTC",
    )


def retired_snapshot(row: Any, retired_hash: str, grace_until: datetime, *, retired: bool) -> ev.KeySnapshot:
    """The snapshot served for a rotated-out secret: the key's settings, valid until `grace_until`.

    Its `expires_at` is capped at the end of the grace period too, so a gateway that only checks expiry still
    refuses the old secret on time; once the grace has ended (`retired`) its status is "deleted".
    """
    base = key_snapshot(row)
    expires = grace_until if base.expires_at is None else min(base.expires_at, grace_until)
    ended = retired or grace_until <= datetime.now(UTC)
    return msgspec.structs.replace(
        base, key_hash=retired_hash, grace_until=grace_until, expires_at=expires,
        status="deleted" if ended else base.status,
    )


async def put_key(ctx: Ctx, snap: ev.KeySnapshot) -> None:
    """Write one snapshot to Redis. No TTL: deleted and disabled keys stay so; a miss never revives one."""
    await ctx.redis.set(ctx.keys.api_key(snap.key_hash), _encode(snap))


async def publish_key(ctx: Ctx, snap: ev.KeySnapshot, *, previous_hash: str | None = None) -> None:
    try:
        await put_key(ctx, snap)
    except RedisError as exc:
        # The event carries the whole snapshot, so running gateway workers still apply the change; but Redis
        # keeps the old one for the next cache miss, so the caller must hear of it and retry.
        await ctx.publisher.publish(ev.KeyChanged(key=snap, previous_hash=previous_hash))
        log.error("key snapshot not written to Redis", extra={"key_id": snap.key_id, "error": repr(exc)})
        raise CacheUnavailable() from exc
    await ctx.publisher.publish(ev.KeyChanged(key=snap, previous_hash=previous_hash))
    KEY_SNAPSHOTS.labels(snap.status).inc()


async def put_catalog(ctx: Ctx, catalog: cat.Catalog, *, force: bool = False) -> bool:
    """Write the catalog unless a newer one is there already (force: at start-up the DB is the truth)."""
    written = await ctx.redis.eval(
        _SET_CATALOG, 1, ctx.keys.catalog(), catalog.version, cat.encode(catalog), "1" if force else "0"
    )
    return bool(written)


async def publish_catalog(ctx: Ctx, catalog: cat.Catalog, *, force: bool = False,
                          announce: bool = True) -> None:
    """Redis, then `catalog.changed` (unless `announce` is off: an unchanged catalog is only re-written, which
    brings Redis up to date after an earlier write failed)."""
    try:
        await put_catalog(ctx, catalog, force=force)
    except RedisError as exc:
        log.error("catalog snapshot not written to Redis",
                  extra={"version": catalog.version, "error": repr(exc)})
        raise CacheUnavailable() from exc
    if not announce:
        return
    await ctx.publisher.publish(ev.CatalogChanged(version=catalog.version))
    CATALOG_VERSIONS.inc()
