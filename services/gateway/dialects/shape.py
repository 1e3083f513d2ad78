"""Typed access to untrusted JSON: a client's request is checked (a wrong type is an InvalidField naming it),
an upstream's answer is read leniently (a wrong type reads as empty), so neither can crash a translator."""

from __future__ import annotations

from typing import Any

from services.gateway.dialects.errors import InvalidField


def obj(value: Any, field: str) -> dict[str, Any]:
    """A client's object field; absent is empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidField(field, f"'{field}' must be an object")
    return value


def arr(value: Any, field: str) -> list[Any]:
    """A client's array field; absent is empty."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidField(field, f"'{field}' must be an array")
    return value


def strings(value: Any, field: str) -> list[str]:
    """A string or an array of strings (OpenAI's `stop`), as a list."""
    if isinstance(value, str):
        return [value]
    items = arr(value, field)
    if not all(isinstance(s, str) for s in items):
        raise InvalidField(field, f"'{field}' must be a string or an array of strings")
    return items


def number(value: Any, field: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidField(field, f"'{field}' must be a number")
    return value


def as_dict(value: Any) -> dict[str, Any]:
    """An upstream's object field, leniently."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """An upstream's array field, leniently."""
    return value if isinstance(value, list) else []


def dicts(value: Any) -> list[dict[str, Any]]:
    """An upstream's array of objects, leniently (anything else in it is skipped)."""
    return [v for v in as_list(value) if isinstance(v, dict)]
