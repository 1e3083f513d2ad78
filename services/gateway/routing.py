"""Which channels a request tries, in which order: the model's channels by priority (highest first), spread by
weight within a priority, then the same for each of the model's fallback models."""

from __future__ import annotations

import random
from collections.abc import Iterator

from services.gateway.catalog_view import CatalogView, ChannelView
from shared.catalog import Model


def weighted_order(channels: list[ChannelView]) -> list[ChannelView]:
    """Priority groups in order; within one, a weighted random permutation (Efraimidis-Spirakis keys)."""
    if len(channels) <= 1:
        return channels
    keyed = [
        (-c.channel.priority, -(random.random() ** (1.0 / max(c.channel.weight, 1))), i, c)
        for i, c in enumerate(channels)
    ]
    keyed.sort()
    return [c for _, _, _, c in keyed]


def candidates(view: CatalogView, model: Model, group: str) -> Iterator[tuple[Model, ChannelView]]:
    yield from ((model, c) for c in weighted_order(view.channels_serving(model.name, group)))
    for name in model.fallbacks:
        fb = view.models.get(name)
        if fb is not None and fb.kind == model.kind:
            yield from ((fb, c) for c in weighted_order(view.channels_serving(fb.name, group)))
