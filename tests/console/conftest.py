"""The console's browser tests: the real stack as processes, the built console served by keys, Debian's
Chromium driven by Playwright (no browser download: `make console-test-deps`)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from shared.config import CommonSettings
from tests import procs
from tests.console.browser import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    CHROMIUM,
    CHROMIUM_ARGS,
    SERVICES,
    ensure_built,
    need_browser,
)


@pytest.fixture(scope="module")
def stack(common: CommonSettings) -> Iterator[dict[str, procs.ServiceProcess]]:
    need_browser()
    ensure_built()
    ports = {name: procs.free_port() for name in SERVICES}
    env = {
        "FAREGATE_KEYS_URL": f"http://127.0.0.1:{ports['keys']}",
        "FAREGATE_BILLING_URL": f"http://127.0.0.1:{ports['billing']}",
        "FAREGATE_USAGE_URL": f"http://127.0.0.1:{ports['usage']}",
        "FAREGATE_KEYS_GATEWAY_URL": f"http://127.0.0.1:{ports['gateway']}",
        "FAREGATE_KEYS_NOTIFIER_URL": f"http://127.0.0.1:{ports['notifier']}",
        "FAREGATE_KEYS_PUBLIC_URL": f"http://127.0.0.1:{ports['keys']}",
        "FAREGATE_KEYS_ADMIN_EMAIL": ADMIN_EMAIL,
        "FAREGATE_KEYS_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "FAREGATE_BILLING_PUBLIC_URL": f"http://127.0.0.1:{ports['keys']}",
        # Nothing listens there: e-mails fail and are retried later, which these tests do not look at.
        "FAREGATE_NOTIFIER_SMTP_PORT": str(procs.free_port()),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    started: dict[str, procs.ServiceProcess] = {}
    try:
        for name in SERVICES:
            started[name] = procs.start(name, env, port=ports[name], ready_path="/readyz")
        yield started
    finally:
        for sp in reversed(list(started.values())):
            sp.stop()
            print(f"--- {sp.name} log (tail) ---\n{sp.log()[-3000:]}")  # shown by pytest only on failure
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    need_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()
