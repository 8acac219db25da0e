"""How much of the way from the unadapted source model to the ceiling a method gets.

The ceiling is the target-supervised oracle, the usual upper bound of domain-adaptation papers: the
same network trained with labels under every target condition (``train-source --weather all``) and
run without adaptation. "Gap closed" is the fraction of the source-to-ceiling gap that a method
recovers: 0 = no better than the source model, 1 = as good as the ceiling, < 0 = worse than the
source model, > 1 = beyond the ceiling (possible: the ceiling is not a strict bound).
"""
from __future__ import annotations

import math

#: below this gap (in the metric's own units, percentage points in the benchmark) the ratio is noise
MIN_GAP = 1e-6


def gap_closed(method: float, source: float, ceiling: float, *, lower_is_better: bool = False,
               min_gap: float = MIN_GAP) -> float:
    """``(method - source) / (ceiling - source)`` for a score where higher is better (mIoU); for an
    error (``lower_is_better``) the same ratio, written ``(err_source - err_method) / (err_source -
    err_ceiling)``. NaN when an input is NaN or when the ceiling is not better than the source by
    more than ``min_gap`` (no gap to close, or a ceiling below the source model)."""
    vals = (float(method), float(source), float(ceiling))
    if any(math.isnan(v) for v in vals):
        return float("nan")
    m, s, c = (-v for v in vals) if lower_is_better else vals
    gap = c - s
    if not gap > min_gap:
        return float("nan")
    return (m - s) / gap
