"""The fake provider as a real process on a free port, shared by this folder's tests; stats reset per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import httpx2
import pytest

from tests.procs import ServiceProcess, start

KEY = "sk-mock-test"


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[ServiceProcess]:
    proc = start("mock-upstream")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def mock_url(mock_upstream: ServiceProcess) -> str:
    httpx.post(mock_upstream.url + "/_mock/reset").raise_for_status()
    return mock_upstream.url


@pytest.fixture
def stats(mock_url: str) -> Callable[[], dict[str, Any]]:
    """What the mock has received since this test began."""

    def read() -> dict[str, Any]:
        response = httpx.get(mock_url + "/_mock/stats")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    return read


# What a client sees when the mock drops the line on purpose (the SDKs ride on httpx2, tests on httpx).
DROPPED = (httpx.RemoteProtocolError, httpx2.RemoteProtocolError)
