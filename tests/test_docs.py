"""The docs stay true: every setting the code reads is in README's configuration table, and every folder the
architecture page names exists."""

from __future__ import annotations

import re
from pathlib import Path

from faregate.cli import load_all_configs
from shared import config

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented_in_the_readme() -> None:
    load_all_configs()
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- config-table:start -->")[1].split("<!-- config-table:end -->")[0]
    missing = [name for name in config.known_variables() if f"`{name}`" not in table]
    assert missing == [], f"run `faregate config` and paste it into README.md: {missing}"


def test_paths_named_in_architecture_exist() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`((?:services|shared|deploy|faregate|console|bench)/[A-Za-z0-9_./-]+)`", text))
    missing = sorted(p for p in named if "*" not in p and "<" not in p and not (ROOT / p).exists())
    assert missing == []
