"""Images and files as each dialect spells them: OpenAI data URLs, Anthropic sources, Gemini inlineData."""

from __future__ import annotations

import mimetypes
import re

from services.gateway.dialects.errors import InvalidField

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?:;[\w-]+=[^;,]*)*;base64,(?P<data>.*)$", re.S)


def parse_data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:` URL, or None for an ordinary URL."""
    m = _DATA_URL.match(url)
    return (m.group("mime"), m.group("data")) if m else None


def data_url(mime: str, data: str) -> str:
    return f"data:{mime};base64,{data}"


def guess_mime(url: str, default: str = "image/jpeg") -> str:
    return mimetypes.guess_type(url.split("?", 1)[0])[0] or default


def image_url_of(part: dict[str, object], field: str) -> str:
    """The URL of an OpenAI `image_url` part (`{"url": ...}` or, loosely, a bare string)."""
    raw = part.get("image_url")
    url = raw.get("url") if isinstance(raw, dict) else raw
    if not isinstance(url, str) or not url:
        raise InvalidField(field, f"'{field}.image_url.url' must be a non-empty string")
    return url
