"""Money is integer micro-USD: 1 USD = 1_000_000 micros. Never a float."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MICROS_PER_USD = 1_000_000


def usd(micros: int) -> str:
    """Display form: '$12.345678' (six decimals, exact)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}${whole}.{frac:06d}"


def parse_usd(text: str) -> int:
    """'12.5' -> 12_500_000. More than six decimals is refused rather than rounded silently."""
    value = Decimal(text.strip().lstrip("$"))
    micros = value * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise ValueError(f"{text!r} has more than six decimal places")
    return int(micros.quantize(Decimal(1), rounding=ROUND_HALF_UP))
