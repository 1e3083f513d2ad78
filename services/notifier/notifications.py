"""Which notifications an event causes: a pure function from (event, preferences, settings) to outbox rows.

No I/O here, so the rules are tested without a database. Addresses and webhook URLs of accounts are resolved
at send time (recipient `account:<id>`), so an event that arrives before the account's address is known still
becomes a notification, and an address changed before sending is honoured.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared import events as ev
from shared.money import usd

# Alert kinds an account can switch on or off per channel. Security mail (password reset, welcome) is always
# sent.
ALERTS: tuple[str, ...] = ("receipt", "low_balance", "key_expiring")
CHANNELS: tuple[str, ...] = ("email", "webhook")


@dataclass(frozen=True)
class Prefs:
    email: str | None = None
    email_alerts: tuple[str, ...] = ALERTS
    webhook_url: str | None = None
    webhook_alerts: tuple[str, ...] = ALERTS


DEFAULT_PREFS = Prefs()


@dataclass(frozen=True)
class Context:
    """What planning needs from the settings."""

    admin_emails: tuple[str, ...] = ()
    admin_webhook: bool = False
    console_url: str = ""
    product_name: str = "Faregate"


@dataclass(frozen=True)
class Planned:
    """One outbox row: (dedupe_key, channel, recipient) is its unique key."""

    dedupe_key: str
    channel: str  # email | webhook
    recipient: str  # account:<id> | address:<email> | admin:<email> | admin:webhook
    account_id: str | None
    kind: str  # template name
    event_type: str
    vars: dict[str, str]  # template variables (display strings)
    data: dict[str, Any]  # webhook data (raw values: integers in micro-USD, ISO times)
    secret: dict[str, str] = field(default_factory=dict)  # sealed at rest, e.g. the reset link

    @property
    def delivery_id(self) -> str:
        return delivery_id(self.dedupe_key, self.channel, self.recipient)


def delivery_id(dedupe_key: str, channel: str, recipient: str) -> str:
    """Stable id of one notification: the Message-ID / webhook idempotency key receivers de-duplicate on."""
    return hashlib.sha256(f"{dedupe_key}\x1f{channel}\x1f{recipient}".encode()).hexdigest()[:32]


def account_recipient(account_id: str) -> str:
    return f"account:{account_id}"


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def _account_alert(
    event: ev.Event, *, account_id: str, alert: str, kind: str, prefs: Prefs, vars: dict[str, str],
    data: dict[str, Any], dedupe_key: str | None = None,
) -> list[Planned]:
    key = dedupe_key or event.event_id
    etype = ev.tag_of(type(event))
    out: list[Planned] = []
    if alert in prefs.email_alerts:
        out.append(Planned(key, "email", account_recipient(account_id), account_id, kind, etype, vars, data))
    if prefs.webhook_url and alert in prefs.webhook_alerts:
        out.append(Planned(key, "webhook", account_recipient(account_id), account_id, kind, etype, vars,
                           data))
    return out


def plan(event: ev.AnyEvent, prefs: Prefs | None, ctx: Context) -> list[Planned]:
    """The notifications `event` causes (maybe none). `prefs` are the account's, when the event has one."""
    p = prefs or DEFAULT_PREFS
    base = {"product_name": ctx.product_name, "console_url": ctx.console_url}
    etype = ev.tag_of(type(event))
    match event:
        case ev.AccountRegistered():
            vars = {**base, "email": event.email}
            secret = {"verify_url": event.verify_url} if event.verify_url else {}
            kind = "welcome_verify" if event.verify_url else "welcome"
            return [Planned(event.event_id, "email", f"address:{event.email}", event.account_id, kind, etype,
                            vars, {"account_id": event.account_id}, secret)]
        case ev.PasswordResetRequested():
            vars = {**base, "email": event.email, "expires_at": _when(event.expires_at)}
            return [Planned(event.event_id, "email", f"address:{event.email}", event.account_id,
                            "password_reset", etype, vars, {"account_id": event.account_id},
                            {"reset_url": event.reset_url})]
        case ev.OrgMemberInvited():
            # Sent to the invited address, which may have no account yet; the link is sealed at rest like a
            # reset link (it lets its holder join the organisation).
            vars = {**base, "email": event.email, "org_name": event.org_name, "role": event.role,
                    "expires_at": _when(event.expires_at)}
            return [Planned(event.event_id, "email", f"address:{event.email}", None, "org_invite", etype,
                            vars, {"org_id": event.org_id, "invitation_id": event.invitation_id},
                            {"invite_url": event.invite_url})]
        case ev.WalletCredited() if event.kind == "topup":
            vars = {**base, "paid": usd(event.paid_micros), "bonus": usd(event.bonus_micros),
                    "credit": usd(event.amount_micros), "balance": usd(event.balance_micros),
                    "reference": event.reference or "-", "date": _when(event.occurred_at)}
            data = {"account_id": event.account_id, "paid_micros": event.paid_micros,
                    "bonus_micros": event.bonus_micros, "credit_micros": event.amount_micros,
                    "balance_micros": event.balance_micros, "reference": event.reference}
            return _account_alert(event, account_id=event.account_id, alert="receipt", kind="topup_receipt",
                                  prefs=p, vars=vars, data=data)
        case ev.PlanPurchased():
            vars = {**base, "plan_name": event.plan_name, "paid": usd(event.paid_micros),
                    "credit": usd(event.credit_micros), "balance": usd(event.balance_micros),
                    "expires_at": _when(event.expires_at), "reference": event.reference or "-",
                    "date": _when(event.occurred_at)}
            data = {"account_id": event.account_id, "plan_id": event.plan_id, "plan_name": event.plan_name,
                    "paid_micros": event.paid_micros, "credit_micros": event.credit_micros,
                    "balance_micros": event.balance_micros, "expires_at": event.expires_at.isoformat(),
                    "reference": event.reference}
            return _account_alert(event, account_id=event.account_id, alert="receipt", kind="plan_receipt",
                                  prefs=p, vars=vars, data=data)
        case ev.BalanceLow():
            vars = {**base, "balance": usd(event.balance_micros), "threshold": usd(event.threshold_micros)}
            data = {"account_id": event.account_id, "balance_micros": event.balance_micros,
                    "threshold_micros": event.threshold_micros, "exhausted": event.exhausted}
            kind = "balance_exhausted" if event.exhausted else "balance_low"
            return _account_alert(event, account_id=event.account_id, alert="low_balance", kind=kind, prefs=p,
                                  vars=vars, data=data)
        case ev.KeyExpiring():
            vars = {**base, "label": event.label or event.key_id, "key_id": event.key_id,
                    "expires_at": _when(event.expires_at)}
            data = {"account_id": event.account_id, "key_id": event.key_id, "label": event.label,
                    "expires_at": event.expires_at.isoformat()}
            # Keys' scan may publish again (a restart, a second replica): one notice per key and expiry
            # instant.
            once = f"key.expiring:{event.key_id}:{event.expires_at.isoformat()}"
            return _account_alert(event, account_id=event.account_id, alert="key_expiring",
                                  kind="key_expiring", prefs=p, vars=vars, data=data, dedupe_key=once)
        case ev.ChannelStateChanged() if event.state == "open":
            vars = {**base, "channel_id": event.channel_id, "reason": event.reason or "-",
                    "date": _when(event.occurred_at)}
            data = {"channel_id": event.channel_id, "state": event.state, "reason": event.reason}
            out = [Planned(event.event_id, "email", f"admin:{addr}", None, "channel_open", etype, vars, data)
                   for addr in ctx.admin_emails]
            if ctx.admin_webhook:
                out.append(Planned(event.event_id, "webhook", "admin:webhook", None, "channel_open", etype,
                                   vars, data))
            return out
        case _:
            return []


def account_of(event: ev.AnyEvent) -> str | None:
    """The account whose preferences apply, if any."""
    return getattr(event, "account_id", None)
