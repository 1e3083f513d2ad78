"""Token usage of one request and its price."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events import ModelPrice
from shared.pricing import cost_micros


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def cost_of(usage: Usage, price: ModelPrice, group_ratio_ppm: int, discount_ppm: int) -> int:
    return cost_micros(
        price,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        group_ratio_ppm=group_ratio_ppm,
        discount_ppm=discount_ppm,
    )
