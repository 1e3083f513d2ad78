"""What a translator raises. The gateway answers both with a 400 in the client's dialect, naming the field."""

from __future__ import annotations


class TranslationError(ValueError):
    """A request that cannot be translated; `field` names the offending field as the client wrote it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class UnsupportedField(TranslationError):
    """The field has no equivalent in the upstream's dialect: refusing beats silently dropping it."""

    def __init__(self, field: str, dialect: str, reason: str = "") -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(field, f"'{field}' cannot be sent to a {dialect} upstream{detail}")
        self.dialect = dialect


class InvalidField(TranslationError):
    """The field is malformed in the client's own dialect."""


class UpstreamStreamError(Exception):
    """An upstream reported an error inside a stream (after its first byte); the gateway ends the client's
    stream with an error event in the client's dialect."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
