"""A target is something a client can send chat requests to: the upstream itself, the nginx hop, Faregate's
gateway or the LiteLLM proxy. Each serves three models: a fixed completion, a fixed stream and a paced stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench import fixtures
from bench.system import Child, children_of, rss_mb, tree_rss_mb


@dataclass
class Endpoint:
    port: int
    path: str
    model: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"


@dataclass
class Target:
    name: str  # short id used in the JSON report
    label: str  # what the Markdown report calls it
    json: Endpoint
    stream: Endpoint
    paced: Endpoint
    api_key: str = ""
    process: Child | None = None  # the system under test (None for the upstream itself)
    # Processes whose RSS counts as "one worker" (granian's workers, LiteLLM's uvicorn); default: the root.
    worker_pids: Callable[[], list[int]] | None = None
    notes: list[str] = field(default_factory=list)
    stop_hook: Callable[[], None] | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def body(self, which: str) -> bytes:
        endpoint: Endpoint = getattr(self, which)
        return fixtures.request_body(endpoint.model, stream=which != "json")

    def memory(self) -> dict[str, float]:
        """RSS in MB: the whole process tree, and the largest single worker."""
        if self.process is None:
            return {}
        workers = self.worker_pids() if self.worker_pids else [self.process.pid]
        return {
            "total_mb": round(tree_rss_mb(self.process.pid), 1),
            "worker_max_mb": round(max((rss_mb(p) for p in workers), default=0.0), 1),
            "workers": len(workers),
        }

    def stop(self) -> None:
        if self.stop_hook is not None:
            self.stop_hook()
        if self.process is not None:
            self.process.stop()


_PATH = "/v1/chat/completions"


def direct(json_port: int, stream_port: int, paced_port: int) -> Target:
    """The upstream itself: the floor every relay is measured from."""
    return Target(
        name="direct", label="upstream, direct",
        json=Endpoint(json_port, _PATH, fixtures.UPSTREAM_MODEL),
        stream=Endpoint(stream_port, _PATH, fixtures.UPSTREAM_MODEL),
        paced=Endpoint(paced_port, _PATH, fixtures.UPSTREAM_MODEL),
    )


def hop(child: Child, json_port: int, stream_port: int, paced_port: int) -> Target:
    return Target(
        name="nginx", label="nginx hop (1 worker)",
        json=Endpoint(json_port, _PATH, fixtures.UPSTREAM_MODEL),
        stream=Endpoint(stream_port, _PATH, fixtures.UPSTREAM_MODEL),
        paced=Endpoint(paced_port, _PATH, fixtures.UPSTREAM_MODEL),
        process=child, worker_pids=lambda: children_of(child.pid) or [child.pid],
    )
