"""E-mail bodies from the files in `templates/`: `<kind>.subject.txt`, `<kind>.txt` and `<kind>.html`.

string.Template with `${name}` placeholders; a missing variable is an error, not an empty hole in a receipt.
HTML gets every value escaped and is wrapped in `_layout.html`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template

TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


@cache
def _load(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


def exists(kind: str) -> bool:
    return all((TEMPLATES / f"{kind}{ext}").is_file() for ext in (".subject.txt", ".txt", ".html"))


def render(kind: str, variables: dict[str, str]) -> Rendered:
    """Raises KeyError naming a variable the template needs but was not given."""
    subject = _load(f"{kind}.subject.txt").substitute(variables).strip()
    text = _load(f"{kind}.txt").substitute(variables)
    escaped = {k: html.escape(v) for k, v in variables.items()}
    body = _load(f"{kind}.html").substitute(escaped)
    page = _load("_layout.html").substitute(
        title=html.escape(subject), content=body, product_name=escaped.get("product_name", "Faregate"))
    return Rendered(subject=subject, text=text, html=page)
