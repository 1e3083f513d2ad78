"""Settings from the environment: one frozen Struct per service, read once at start-up.

Every variable is `FAREGATE_<NAME>` for the common settings and `FAREGATE_<SERVICE>_<NAME>` for a service's own.
A variable that no settings class declares, or one whose value does not parse, stops the process at start-up with
a message naming it: a typo in a deployment must not silently fall back to a default.
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import msgspec

PREFIX = "FAREGATE_"

S = TypeVar("S", bound=msgspec.Struct)

# service prefix ("" for common) -> settings class; filled by `register` at import time.
_REGISTRY: dict[str, type[msgspec.Struct]] = {}


class ConfigError(Exception):
    """A setting is unknown or malformed; the message names the variable."""


def register(service: str) -> Any:
    """Class decorator: declare a settings class and the prefix its variables use."""

    def wrap(cls: type[S]) -> type[S]:
        _REGISTRY[service.upper()] = cls
        return cls

    return wrap


def env_name(service: str, field: str) -> str:
    middle = f"{service.upper()}_" if service else ""
    return f"{PREFIX}{middle}{field.upper()}"


def known_variables() -> dict[str, tuple[str, str]]:
    """Every declared variable -> (service, field)."""
    out: dict[str, tuple[str, str]] = {}
    for service, cls in _REGISTRY.items():
        for field in cls.__struct_fields__:
            out[env_name(service, field)] = (service, field)
    return out


def check_unknown(environ: Mapping[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    known = known_variables()
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known)
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + "; see the configuration table in README.md"
        )


def _convert(name: str, raw: str, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if raw == "":
            return None
        hint = args[0]
        origin = get_origin(hint)
    try:
        if hint is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return raw
        if origin is tuple:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if origin is Literal:
            choices = get_args(hint)
            if raw.strip() in choices:
                return raw.strip()
            raise ValueError(f"expected one of {', '.join(map(str, choices))}")
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is malformed: {exc}") from None
    raise ConfigError(f"{name}: unsupported setting type {hint!r}")


def load(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build `cls` from the environment; unknown or malformed variables raise ConfigError naming them."""
    env = os.environ if environ is None else environ
    check_unknown(env)
    service = next((svc for svc, c in _REGISTRY.items() if c is cls), None)
    if service is None:
        raise ConfigError(f"{cls.__name__} is not a registered settings class")
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in cls.__struct_fields__:
        name = env_name(service, field)
        if name in env:
            values[field] = _convert(name, env[name], hints[field])
    try:
        return cls(**values)
    except (TypeError, ValueError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


@register("")
class CommonSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Settings every process reads."""

    # Postgres; each service owns one schema in this database.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/faregate"
    # Redis: key snapshots, the catalog, rate limits, the spend guard, breaker state.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # NATS with JetStream: the event backbone.
    nats_url: str = "nats://127.0.0.1:4222"
    # Prefix for NATS streams/subjects and Redis keys, so several stacks (or test runs) share one server.
    namespace: str = "faregate"
    # JetStream stream replicas (1 on a single server; 3 on a 3-node cluster, see deploy/README.md).
    stream_replicas: int = 1
    # Log level of every process (DEBUG, INFO, WARNING, ERROR).
    log_level: str = "INFO"
    # json (one object per line, with the request id) or text (for a terminal; `faregate dev` uses it).
    log_format: str = "json"  # json | text
    # OpenTelemetry: "none" (default), "otlp" (OTLP/HTTP to otlp_endpoint) or "console".
    otel_exporter: str = "none"
    # OTLP/HTTP collector base URL (traces go to <endpoint>/v1/traces).
    otel_endpoint: str = "http://127.0.0.1:4318"
    # 32+ bytes, base64 or plain: encrypts upstream keys at rest and signs session/CSRF tokens.
    secret_key: str = "dev-only-secret-change-me-dev-only-secret"  # noqa: S105 - dev default; README: set it
    # Where local state lives (spool files, self-started engines in `make run`).
    data_dir: str = ".data"
    # Address services use to reach each other's HTTP APIs.
    keys_url: str = "http://127.0.0.1:8101"
    billing_url: str = "http://127.0.0.1:8102"
    usage_url: str = "http://127.0.0.1:8103"
    # Shared token for service-to-service calls (internal endpoints refuse calls without it).
    internal_token: str = "dev-internal-token"  # noqa: S105 - dev default; README: set it

    def __post_init__(self) -> None:
        if self.log_format not in ("json", "text"):
            raise ValueError(f"{env_name('', 'log_format')} must be json or text")
        if self.otel_exporter not in ("none", "otlp", "console"):
            raise ValueError(f"{env_name('', 'otel_exporter')} must be none, otlp or console")
        if len(self.secret_key) < 32:
            raise ValueError(f"{env_name('', 'secret_key')} must be at least 32 characters")


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Fields every HTTP service's settings class includes (by inheritance)."""

    # Listen address and port of this service, and its number of worker processes.
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # On SIGTERM, how long in-flight requests (a stream, for the gateway) may take to finish before the worker
    # is stopped; keep it below the pod's terminationGracePeriodSeconds minus its preStop sleep.
    shutdown_grace_s: int = 30
