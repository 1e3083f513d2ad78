"""Passwords: argon2id (argon2-cffi's defaults, RFC 9106 low-memory profile), hashed off the event loop."""

from __future__ import annotations

import asyncio
import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def _dummy() -> str:
    return _hasher.hash("no account has this password")


async def verify_password(stored: str | None, password: str) -> bool:
    """With no stored hash (unknown e-mail), still spend the time of one verification, so response timing does
    not tell which addresses have accounts."""
    return await asyncio.to_thread(_verify, stored or _dummy(), password) and stored is not None
