"""Deterministic reply text and token counts for the fake provider.

Replies are drawn from a fixed vocabulary with a seed taken from the request, so the same request always
gets the same reply, yet no reply ever repeats the prompt: a test can plant a unique word in a prompt and
prove the gateway never wrote it anywhere. Token counting is a stand-in for a real tokenizer (tiktoken
cannot fetch its files here): words split into pieces of up to six letters, digits in groups of three, every
other symbol one token each. Every vocabulary word is exactly one token, so a reply's length in tokens is
under precise control.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections.abc import Iterable
from typing import Any

VOCABULARY = (
    "amber",
    "bright",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "grove",
    "harbor",
    "island",
    "jade",
    "kettle",
    "lumen",
    "meadow",
    "nimbus",
    "orbit",
    "pebble",
    "quartz",
    "river",
    "sable",
    "tundra",
    "umber",
    "violet",
    "willow",
    "yarrow",
    "zephyr",
    "basalt",
    "copper",
    "dune",
    "echo",
    "fern",
    "glade",
    "heron",
    "iris",
    "jasper",
    "kelp",
    "lichen",
    "maple",
    "nectar",
    "onyx",
    "prism",
    "quill",
    "reed",
    "slate",
    "thorn",
    "vale",
    "wren",
)

# Every message costs a few tokens of framing, and the reply is primed with a few more (as OpenAI counts).
PER_MESSAGE_TOKENS = 3
REPLY_PRIMING_TOKENS = 3
# A fixed price for an image in a prompt (OpenAI's low-detail price).
IMAGE_TOKENS = 85
# Prompts at least this long report part of themselves as read from the provider's cache, in blocks.
CACHE_MIN_TOKENS = 1024
CACHE_BLOCK = 128

_PIECE = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]")


def _piece_tokens(piece: str) -> int:
    if piece.isascii() and piece.isalpha():
        return -(-len(piece) // 6)
    if piece.isdigit():
        return -(-len(piece) // 3)
    return 1


def count_tokens(text: str) -> int:
    return sum(_piece_tokens(m.group()) for m in _PIECE.finditer(text))


def truncate_to_tokens(text: str, limit: int) -> tuple[str, bool]:
    """The longest prefix of `text` within `limit` tokens (cut at a piece boundary); True when it was cut."""
    used = 0
    for m in _PIECE.finditer(text):
        cost = _piece_tokens(m.group())
        if used + cost > limit:
            return text[: m.start()].rstrip(), True
        used += cost
    return text, False


def split_text(text: str, parts: int) -> list[str]:
    """Split `text` into at most `parts` non-empty pieces of similar token length, at piece boundaries."""
    starts = [m.start() for m in _PIECE.finditer(text)]
    if not starts or parts <= 1:
        return [text] if text else []
    parts = min(parts, len(starts))
    cuts = [starts[(i * len(starts)) // parts] for i in range(1, parts)]
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b]]


def seed_of(*parts: Any) -> int:
    """A stable seed from any JSON-able description of a request."""
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big")


def reply_text(seed: int, min_tokens: int = 0) -> str:
    """A few sentences of vocabulary words: 24-48 tokens, or more when `min_tokens` asks for more."""
    rng = random.Random(seed)
    target = max(rng.randint(24, 48), min_tokens)
    out: list[str] = []
    used = 0
    while used < target:
        length = rng.randint(4, 10)
        words = [rng.choice(VOCABULARY) for _ in range(length)]
        sentence = " ".join(words).capitalize() + "."
        out.append(sentence)
        used += length + 1
    text = " ".join(out)
    return truncate_to_tokens(text, max(target, 1))[0]


def reasoning_text(seed: int) -> str:
    """The "thinking" a reasoner model shows before it answers."""
    return reply_text(seed ^ 0x5EED)


def fake_value(schema: Any, name: str, seed: int) -> Any:
    """A value that satisfies a (simple) JSON schema: what the model "decides" as tool arguments."""
    if not isinstance(schema, dict):
        return VOCABULARY[seed % len(VOCABULARY)]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    kind = str(kind).lower()  # Gemini spells types in capitals
    if kind == "object":
        props = schema.get("properties")
        if not isinstance(props, dict):
            return {}
        return {k: fake_value(v, k, seed + i) for i, (k, v) in enumerate(sorted(props.items()))}
    if kind == "array":
        return [fake_value(schema.get("items") or {}, name, seed)]
    if kind == "integer":
        return 3 + seed % 7
    if kind == "number":
        return 21.5
    if kind == "boolean":
        return True
    if "location" in name or "city" in name:
        return "Paris"
    return VOCABULARY[seed % len(VOCABULARY)]


def json_reply(seed: int, schema: Any = None) -> str:
    if isinstance(schema, dict) and schema.get("properties"):
        return json.dumps(fake_value(schema, "", seed))
    return json.dumps({"answer": reply_text(seed), "confidence": 0.5 + (seed % 5) / 10})


def prompt_tokens(texts: Iterable[str], messages: int, images: int = 0) -> int:
    return (
        sum(count_tokens(t) for t in texts)
        + messages * PER_MESSAGE_TOKENS
        + REPLY_PRIMING_TOKENS
        + images * IMAGE_TOKENS
    )


def cached_tokens(prompt: int, forced: int | None) -> int:
    """Tokens the provider reports as served from its prompt cache: forced by a fault header, or by length."""
    if forced is not None:
        return max(0, min(forced, prompt))
    if prompt < CACHE_MIN_TOKENS:
        return 0
    return (prompt // CACHE_BLOCK) * CACHE_BLOCK
