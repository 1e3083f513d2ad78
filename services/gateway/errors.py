"""The gateway's errors and how each client dialect spells them.

Every error a client sees is one of these, built by the gateway: an upstream's own error body (which may name
its keys, accounts or internals) is never passed through.
"""

from __future__ import annotations

import msgspec

from shared.web import ServiceError

_enc = msgspec.json.Encoder()


class GatewayError(ServiceError):
    """An HTTP status, a stable code, a message safe to show, and optional extra headers (Retry-After)."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, field=param)
        self.retry_after = retry_after
        self.headers: dict[str, str] = {}  # extra response headers (x-ratelimit-* on a 429)


class BadRequest(GatewayError):
    status = 400
    code = "invalid_request_error"


class InvalidKey(GatewayError):
    status = 401
    code = "invalid_api_key"


class InsufficientQuota(GatewayError):
    status = 402
    code = "insufficient_quota"


class NotAllowed(GatewayError):
    status = 403
    code = "permission_denied"


class ModelNotFound(GatewayError):
    status = 404
    code = "model_not_found"


class BodyTooLarge(GatewayError):
    status = 413
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    code = "rate_limit_exceeded"


class BadUpstream(GatewayError):
    status = 502
    code = "bad_upstream_response"


class NoChannel(GatewayError):
    status = 503
    code = "no_channel_available"


class UpstreamTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"


# OpenAI's `type` field by status (its SDKs map the status to an exception class; `type` is informational).
_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_ANTHROPIC_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(dialect: str, status: int, code: str, message: str, param: str | None = None) -> bytes:
    if dialect == "anthropic":
        return _enc.encode(
            {"type": "error", "error": {"type": _ANTHROPIC_TYPE.get(status, "api_error"), "message": message}}
        )
    if dialect == "gemini":
        return _enc.encode(
            {"error": {"code": status, "message": message, "status": _GEMINI_STATUS.get(status, "INTERNAL")}}
        )
    return _enc.encode(
        {
            "error": {
                "message": message,
                "type": _OPENAI_TYPE.get(status, "server_error"),
                "param": param,
                "code": code,
            }
        }
    )


def stream_error_event(dialect: str, status: int, code: str, message: str) -> bytes:
    """The SSE frame that ends a stream which failed after its first byte was sent."""
    if dialect == "anthropic":
        return b"event: error\ndata: " + error_body(dialect, status, code, message) + b"\n\n"
    return b"data: " + error_body(dialect, status, code, message) + b"\n\n"


def headers_for(exc: GatewayError) -> dict[str, str]:
    out = dict(exc.headers)
    if exc.retry_after is not None:
        out["retry-after"] = str(max(1, round(exc.retry_after)))
    return out
