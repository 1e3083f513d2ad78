"""The catalog snapshot: channels, models, prices and groups, as the keys service publishes it to gateways.

Keys owns the catalog tables; it writes this snapshot to Redis (`{ns}:catalog`) and publishes `catalog.changed`
on every edit; each gateway worker holds it in memory and reloads on the event. Upstream keys travel encrypted
(shared.crypto) and are decrypted only inside the gateway when it calls the upstream.
"""

from __future__ import annotations

import msgspec

from shared.events import ModelPrice

PPM = 1_000_000


class Channel(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    provider: str  # openai (any OpenAI-compatible API) | anthropic | gemini
    base_url: str  # e.g. https://api.deepseek.com/v1, https://api.anthropic.com, https://generativelanguage.googleapis.com
    api_keys_enc: tuple[str, ...] = ()  # encrypted with shared.crypto; one is picked per request
    models: tuple[str, ...] = ()  # public model names it serves
    model_map: dict[str, str] = {}  # public name -> upstream name
    priority: int = 0  # higher first
    weight: int = 1  # spread within a priority
    groups: tuple[str, ...] = ()  # empty = every group
    status: str = "enabled"  # enabled | disabled (by a person)
    cost_ratio_ppm: int = PPM  # what the upstream charges the operator, as a share of the model's list price


class Model(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # public name clients use
    provider: str  # family for display: openai, anthropic, google, deepseek, qwen, zhipu, moonshot, doubao
    kind: str = "chat"  # chat | embedding | image
    context_window: int = 128_000
    max_output: int = 8_192  # reserved as worst case when the client gives no max_tokens
    price: ModelPrice  # what the operator sells at (micro-USD per million tokens)
    list_price: ModelPrice | None = None  # the upstream's public price (cost = list × channel cost ratio)
    fallbacks: tuple[str, ...] = ()
    image_price_micros: int = 0  # per generated image (image models)


class Group(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    ratio_ppm: int = PPM  # price multiplier
    models: tuple[str, ...] = ()  # allowed models; empty = all


class Catalog(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 0
    channels: tuple[Channel, ...] = ()
    models: tuple[Model, ...] = ()
    groups: tuple[Group, ...] = ()
    discount_ppm: int = 0  # platform-wide discount, parts per million off


encode = msgspec.json.Encoder().encode
decode = msgspec.json.Decoder(Catalog).decode
