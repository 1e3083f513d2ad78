"""Per-account notification preferences: validation, the webhook secret, and the API's view of them."""

from __future__ import annotations

import ipaddress
import re
import secrets
import urllib.parse
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from services.notifier import repo
from services.notifier.notifications import ALERTS, Prefs
from shared import crypto
from shared.web import ServiceError

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


class PrefsUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """PUT body: fields left out keep their value; `null` clears the address override or the webhook."""

    email: str | msgspec.UnsetType | None = msgspec.UNSET
    email_alerts: list[str] | msgspec.UnsetType = msgspec.UNSET
    webhook_url: str | msgspec.UnsetType | None = msgspec.UNSET
    webhook_alerts: list[str] | msgspec.UnsetType = msgspec.UNSET


class PrefsView(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    email: str | None
    email_alerts: list[str]
    webhook_url: str | None
    webhook_alerts: list[str]
    webhook_secret_set: bool
    available_alerts: list[str]
    # Present only in the answer that created or rotated it: the secret is shown once.
    webhook_secret: str | None = None


class Stored(msgspec.Struct, frozen=True, kw_only=True):
    """A preferences row as the repo reads and writes it (webhook_secret sealed)."""

    account_id: str
    email: str | None = None
    email_alerts: tuple[str, ...] = ALERTS
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_alerts: tuple[str, ...] = ALERTS
    updated_at: datetime | None = None


def stored_from_row(row: Mapping[str, Any] | None, account_id: str) -> Stored:
    if row is None:
        return Stored(account_id=account_id)
    return Stored(account_id=row["account_id"], email=row["email"], email_alerts=tuple(row["email_alerts"]),
                  webhook_url=row["webhook_url"], webhook_secret=row["webhook_secret"],
                  webhook_alerts=tuple(row["webhook_alerts"]), updated_at=row["updated_at"])


def prefs_from_row(row: Mapping[str, Any]) -> Prefs:
    s = stored_from_row(row, row["account_id"])
    return Prefs(email=s.email, email_alerts=s.email_alerts, webhook_url=s.webhook_url,
                 webhook_alerts=s.webhook_alerts)


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _alerts(values: list[str], field: str) -> tuple[str, ...]:
    unknown = sorted(set(values) - set(ALERTS))
    if unknown:
        raise ServiceError(f"unknown alert {unknown[0]!r}; choose from {', '.join(ALERTS)}",
                           code="invalid_alert", status=422, field=field)
    return tuple(a for a in ALERTS if a in values)


def check_email(value: str) -> str:
    value = value.strip()
    if len(value) > 254 or not _EMAIL.match(value):
        raise ServiceError("not a valid e-mail address", code="invalid_email", status=422, field="email")
    return value


def check_webhook_url(value: str, *, allow_private: bool) -> str:
    """http(s) with a host; unless allowed, not a loopback/private/link-local literal (a webhook must not be a
    way to poke at the operator's own network)."""
    value = value.strip()
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        parts = urllib.parse.urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or len(value) > 2000:
        raise ServiceError("webhook_url must be an http(s) URL", code="invalid_webhook_url", status=422,
                           field="webhook_url")
    if not allow_private:
        host = parts.hostname
        private = host == "localhost" or host.endswith(".localhost")
        try:
            ip = ipaddress.ip_address(host)
            private = private or not ip.is_global
        except ValueError:
            pass
        if private:
            raise ServiceError("webhook_url points at a private or local address", code="invalid_webhook_url",
                               status=422, field="webhook_url")
    return value


def apply_update(current: Stored, update: PrefsUpdate, *, secret_key: str,
                 allow_private: bool) -> tuple[Stored, str | None]:
    """The new preferences and, when a webhook URL is first set, the new secret in clear (shown once)."""
    changes: dict[str, Any] = {}
    if not isinstance(update.email, msgspec.UnsetType):
        changes["email"] = check_email(update.email) if update.email else None
    if not isinstance(update.email_alerts, msgspec.UnsetType):
        changes["email_alerts"] = _alerts(update.email_alerts, "email_alerts")
    if not isinstance(update.webhook_alerts, msgspec.UnsetType):
        changes["webhook_alerts"] = _alerts(update.webhook_alerts, "webhook_alerts")
    plain_secret = None
    if not isinstance(update.webhook_url, msgspec.UnsetType):
        if update.webhook_url:
            changes["webhook_url"] = check_webhook_url(update.webhook_url, allow_private=allow_private)
            if current.webhook_secret is None:
                plain_secret = new_webhook_secret()
                changes["webhook_secret"] = crypto.seal(plain_secret, secret_key)
        else:
            changes["webhook_url"] = None
            changes["webhook_secret"] = None
    return msgspec.structs.replace(current, **changes), plain_secret


def view(s: Stored, plain_secret: str | None = None) -> PrefsView:
    return PrefsView(account_id=s.account_id, email=s.email, email_alerts=list(s.email_alerts),
                     webhook_url=s.webhook_url, webhook_alerts=list(s.webhook_alerts),
                     webhook_secret_set=s.webhook_secret is not None, available_alerts=list(ALERTS),
                     webhook_secret=plain_secret)


async def load(pool: asyncpg.Pool, account_id: str) -> Stored:
    return stored_from_row(await pool.fetchrow(repo.GET_PREFS, account_id), account_id)


async def update(pool: asyncpg.Pool, account_id: str, data: PrefsUpdate, *, secret_key: str,
                 allow_private: bool) -> PrefsView:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(repo.GET_PREFS + " FOR UPDATE", account_id)
        new, plain = apply_update(stored_from_row(row, account_id), data, secret_key=secret_key,
                                  allow_private=allow_private)
        saved = await conn.fetchrow(repo.UPSERT_PREFS, new.account_id, new.email, list(new.email_alerts),
                                    new.webhook_url, new.webhook_secret, list(new.webhook_alerts))
    return view(stored_from_row(saved, account_id), plain)


async def rotate_secret(pool: asyncpg.Pool, account_id: str, secret_key: str) -> str:
    """A new signing secret in clear (shown once); the old one stops working at once."""
    plain = new_webhook_secret()
    done = await pool.execute(repo.REPLACE_SIGNING_KEY, account_id, crypto.seal(plain, secret_key))
    if done.endswith(" 0"):
        raise ServiceError("set a webhook_url first", code="no_webhook", status=409)
    return plain
