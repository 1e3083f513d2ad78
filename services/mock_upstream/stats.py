"""What the mock received, kept in memory so a test can ask (`GET /_mock/stats`, `POST /_mock/reset`).

The mock is test equipment: it keeps the last request bodies it saw so a test can check what a gateway
forwarded (translated fields, `stream_options`, the upstream key). Faregate itself never stores content.
Stats live in the worker process that served the request: run the mock with one worker (the default) when a
test reads them.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

import msgspec

KEEP_REQUESTS = 200


class Entry(msgspec.Struct, kw_only=True):
    seq: int
    path: str
    dialect: str
    model: str
    stream: bool
    fault: str
    api_key: str | None
    started_at: float
    request_id: str | None = None
    status: int = 0
    # in_progress | completed | cancelled (the client hung up) | disconnected (the mock dropped it on purpose)
    # | error (the mock answered with an error status) | stream_error (it reported an error mid-stream)
    outcome: str = "in_progress"
    events_sent: int = 0
    body: Any = None


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._seq = 0
        self.entries: deque[Entry] = deque(maxlen=KEEP_REQUESTS)
        self.by_path: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()

    def begin(
        self,
        *,
        path: str,
        dialect: str,
        model: str,
        stream: bool,
        fault: str,
        api_key: str | None,
        request_id: str | None,
        body: Any,
    ) -> Entry:
        self._seq += 1
        entry = Entry(
            seq=self._seq,
            path=path,
            dialect=dialect,
            model=model,
            stream=stream,
            fault=fault,
            api_key=api_key,
            started_at=time.time(),
            request_id=request_id,
            body=body,
        )
        self.entries.append(entry)
        self.by_path[path] += 1
        if model:
            self.by_model[model] += 1
        return entry

    def snapshot(self) -> dict[str, Any]:
        outcomes = Counter(e.outcome for e in self.entries)
        return {
            "total": self._seq,
            "by_path": dict(self.by_path),
            "by_model": dict(self.by_model),
            "by_outcome": dict(outcomes),
            "cancelled": outcomes.get("cancelled", 0),
            "requests": [msgspec.to_builtins(e) for e in self.entries],
        }
