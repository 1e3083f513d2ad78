"""Checks on API-key settings that msgspec's type constraints cannot express."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

from services.keys.errors import InvalidInput


def ip_allow_list(entries: list[str]) -> list[str]:
    """Addresses and CIDR ranges, v4 and v6, in canonical form; host bits set in a range are an error (a typo
    like 10.0.0.1/8 would otherwise silently allow all of 10/8)."""
    out: list[str] = []
    errors: dict[str, str] = {}
    for i, raw in enumerate(entries):
        text = raw.strip()
        try:
            if "/" in text:
                out.append(str(ipaddress.ip_network(text, strict=True)))
            else:
                out.append(str(ipaddress.ip_address(text)))
        except ValueError as exc:
            errors[f"ip_allow[{i}]"] = f"{raw!r} is not an IPv4/IPv6 address or CIDR range ({exc})"
    if errors:
        raise InvalidInput(errors)
    return list(dict.fromkeys(out))


def expiry(value: datetime | None, *, now: datetime | None = None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise InvalidInput({"expires_at": "give a time zone (e.g. 2030-01-01T00:00:00Z)"})
    if value <= (now or datetime.now(UTC)):
        raise InvalidInput({"expires_at": "must be in the future"})
    return value


def models(names: list[str], known: set[str]) -> list[str]:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidInput({"models": f"unknown model(s): {', '.join(unknown[:5])}"})
    return list(dict.fromkeys(names))
