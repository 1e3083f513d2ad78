"""The one pricing function, used by the gateway (reservations, settlement) and billing (debits) alike, so the
two always agree to the micro-dollar.

    cost = round_half_up( ( uncached_input × input_price + cached × cached_price + output × output_price )
                          × group_ratio × (1 − discount) / 1e6 )

Prices are integer micro-USD per million tokens; the group ratio and discount are integer parts per million.
`prompt_tokens` includes cached tokens (as OpenAI reports it), so uncached_input = prompt − cached. Everything is
computed as one exact integer fraction and rounded once, half up, to a whole micro-USD.
"""

from __future__ import annotations

from shared.events import ModelPrice

PPM = 1_000_000
_DEN = PPM * PPM * PPM  # per-million tokens × ratio ppm × discount ppm


def cost_micros(
    price: ModelPrice,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    group_ratio_ppm: int = PPM,
    discount_ppm: int = 0,
) -> int:
    if min(prompt_tokens, completion_tokens, cached_tokens, group_ratio_ppm, discount_ppm) < 0:
        raise ValueError("token counts, ratio and discount must not be negative")
    cached = min(cached_tokens, prompt_tokens)
    tokens_value = (
        (prompt_tokens - cached) * price.input
        + cached * price.cached_input
        + completion_tokens * price.output
    )
    num = tokens_value * group_ratio_ppm * (PPM - discount_ppm)
    return (num + _DEN // 2) // _DEN
