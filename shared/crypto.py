"""Secrets at rest: upstream keys are sealed with AES-256-GCM under a key derived from FAREGATE_SECRET_KEY."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PREFIX = "v1:"


def _key(secret: str, purpose: str) -> bytes:
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).digest()


def seal(plaintext: str, secret: str) -> str:
    nonce = os.urandom(12)
    ct = AESGCM(_key(secret, "upstream-keys")).encrypt(nonce, plaintext.encode(), b"faregate")
    return _PREFIX + base64.urlsafe_b64encode(nonce + ct).decode()


def unseal(token: str, secret: str) -> str:
    if not token.startswith(_PREFIX):
        raise ValueError("not a sealed value")
    raw = base64.urlsafe_b64decode(token[len(_PREFIX) :])
    return AESGCM(_key(secret, "upstream-keys")).decrypt(raw[:12], raw[12:], b"faregate").decode()


def hash_api_key(secret: str) -> str:
    """API keys carry 192+ bits of randomness, so a fast hash is safe (no dictionary to attack) and lets the
    gateway look a key up in microseconds; passwords, which are guessable, use argon2id instead."""
    return hashlib.sha256(secret.encode()).hexdigest()
