"""Percentiles, medians and spread: the only arithmetic the report does."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median across repeats and the spread (min..max), rounded for the report."""
    return {"median": round(median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "n": len(values)}


def spread_pct(values: Sequence[float]) -> float:
    """(max - min) / median, in percent: how much the repeats disagree."""
    mid = median(values)
    return round(100 * (max(values) - min(values)) / mid, 1) if mid else 0.0
