"""What the console tests share: where the build and the browser are, the stack they start, the test admin."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "console" / "dist"
CHROMIUM = "/usr/bin/chromium"
# Without the networking flags Chromium keeps trying to reach the closed network (/work/shared/RECIPES.md).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic"]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
ADMIN_EMAIL = "admin@console-test.example"
ADMIN_PASSWORD = "console-admin-password"
SERVICES = ("mock-upstream", "keys", "billing", "usage", "notifier", "gateway")


def need_browser() -> None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed: run `make console-test-deps` (issue 8)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: run `make console-test-deps` (issue 8)")


def ensure_built() -> None:
    if (DIST / "index.html").is_file():
        return
    if shutil.which("npm") is None:
        pytest.skip("console/dist is not built and npm is missing: run `make console` (issue 8)")
    subprocess.run(["make", "console"], cwd=ROOT, check=True)


