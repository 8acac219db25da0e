"""Confidence intervals over seeds: the mean of a few runs with its Student-t interval, and the paired
difference of two methods run on the same seeds.

A benchmark cell from one run says nothing about how much it moves with the stream and the
method's randomness; with n seeds the 95 % interval is ``mean ± t(0.975, n-1) · s / sqrt(n)`` (s: the
sample standard deviation, n-1 degrees of freedom). Two methods compared on the same seeds are
compared by their per-seed differences (a paired t interval), which removes what the seed does to
both; the difference is *significant* when its interval excludes 0.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with its two-sided Student-t interval (NaN bounds when n < 2)."""

    mean: float
    half_width: float
    low: float
    high: float
    n: int
    std: float
    confidence: float = 0.95

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (for a difference: the two methods differ at this confidence)."""
        return self.n >= 2 and not math.isnan(self.low) and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["significant"] = self.significant
        return d

    def format(self, digits: int = 1) -> str:
        """``47.0 ± 0.3`` (n >= 2) or ``47.0`` (one run)."""
        if math.isnan(self.mean):
            return "–"
        if self.n < 2 or math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean of ``values`` (NaN/None dropped), n-1 degrees of freedom."""
    from scipy.stats import t as student_t

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(vals)
    if n == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, nan, 0, nan, confidence)
    mean = math.fsum(vals) / n
    if n == 1:
        nan = float("nan")
        return Interval(mean, nan, nan, nan, 1, nan, confidence)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, half, mean - half, mean + half, n, std, confidence)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Interval of the mean of ``a[i] - b[i]`` (paired by seed; pairs with a missing value dropped)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same length, got {len(a)} and {len(b)}")
    diffs = []
    for x, y in zip(a, b):
        if x is None or y is None or math.isnan(float(x)) or math.isnan(float(y)):
            continue
        diffs.append(float(x) - float(y))
    return t_interval(diffs, confidence)
