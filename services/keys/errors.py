"""The keys service's errors and how every failure becomes `{"error": {"code", "message", ...}}`."""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from shared.web import ServiceError, Unauthorized

log = logging.getLogger("faregate.keys")


class InvalidInput(ServiceError):
    """Input that parsed but makes no sense; `fields` maps each offending field to what is wrong with it."""

    status = 400
    code = "validation_error"

    def __init__(self, fields: dict[str, str], message: str = "") -> None:
        first = next(iter(fields.items()))
        super().__init__(message or f"{first[0]}: {first[1]}")
        self.fields = fields


class NotLoggedIn(Unauthorized):
    code = "not_logged_in"

    def __init__(self) -> None:
        super().__init__("not logged in or login expired")


class CacheUnavailable(ServiceError):
    status = 503
    code = "cache_unavailable"

    def __init__(self) -> None:
        super().__init__("the change is saved, but the gateways' key cache could not be updated; try again")


class TooManyAttempts(ServiceError):
    status = 429
    code = "too_many_attempts"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def service_error(request: Request[Any, Any, Any], exc: ServiceError) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"error": {"code": exc.code, "message": exc.message}}
    fields = getattr(exc, "fields", None)
    if fields:
        body["error"]["fields"] = fields
    elif exc.field:
        body["error"]["fields"] = {exc.field: exc.message}
    headers = {}
    if isinstance(exc, TooManyAttempts):
        headers["Retry-After"] = str(exc.retry_after_s)
    return Response(body, status_code=exc.status, headers=headers)


_NAMED = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")
_AT = re.compile(r" - at `\$\.?([^`]*)`")


def _field_of(item: dict[str, Any]) -> str:
    message = str(item.get("message", ""))
    if m := _NAMED.search(message):
        return m.group(1)
    if m := _AT.search(message):
        return m.group(1) or str(item.get("key") or "body")
    key = item.get("key")
    return "body" if key in (None, "", "data") else str(key)


def validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    """msgspec's complaints about a request body, a query or a path parameter, one message per field."""
    fields: dict[str, str] = {}
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if isinstance(item, dict):
            fields.setdefault(_field_of(item), _AT.sub("", str(item.get("message", "invalid"))))
    if not fields:
        fields["body"] = str(exc.detail)
    first = next(iter(fields.items()))
    body = {"error": {"code": "validation_error", "message": f"{first[0]}: {first[1]}", "fields": fields}}
    return Response(body, status_code=400)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    """Litestar's own errors (malformed JSON, 404 route, 405) in the same shape as ours."""
    code = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
            405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "error")
    if exc.status_code >= 500:
        code, message = "internal_error", "internal error"
    else:
        message = str(exc.detail)
    return Response({"error": {"code": code, "message": message}}, status_code=exc.status_code,
                    headers=getattr(exc, "headers", None) or {})


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """A bug: logged once here (with the request id), answered without internals."""
    log.exception("unhandled error", extra={"path": request.url.path, "method": request.method})
    return Response({"error": {"code": "internal_error", "message": "internal error"}}, status_code=500)


HANDLERS: dict[int | type[Exception], Any] = {
    ServiceError: service_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    Exception: internal_error,
}
