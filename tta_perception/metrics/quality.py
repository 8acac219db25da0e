"""How good a label-free quality estimate is, against the truth of the same frames.

- Spearman's rank correlation of the estimate with the true per-frame pixel accuracy and mIoU, and
  over windows of ``window`` consecutive frames (the means of estimate and truth per window): does
  it rank frames, and stretches of the drive, as the truth does?
- the mean absolute error of the estimate against the true pixel accuracy, per phase and overall
  (in accuracy points): is the number itself right?
- the AUROC of the estimate for the frames whose true mIoU is below the source model's on the same
  frame (a lower estimate should mean "worse than not adapting"), and the share of those frames the
  WARN level (or worse) flags, beside the share of the other frames it flags; and, given the source
  model's own estimate on the same frames, the AUROC of the estimated *gain* (the output's estimate
  minus the source model's) for those frames: what a stack that also runs the source model could tell;
  and how many of them, per frame and per window, a gain below 0 (the node's WARN) flags, beside the
  other frames it flags; the same for the share of the source model's classes the outputs kept
  (``kept`` below the method's threshold), and for either flag.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np


GAIN_THRESHOLDS = (0.0, 0.05, 0.1)  # thresholds of the estimated gain at which the window flags are scored


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation of the finite pairs (NaN with fewer than 3 or a constant side)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok])[0])


def window_means(values: Sequence[float], window: int) -> np.ndarray:
    """Means of consecutive non-overlapping windows (the last one may be shorter)."""
    v = np.asarray(values, float)
    return np.array([np.nanmean(v[i:i + window]) for i in range(0, len(v), window)]) if len(v) else v


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Probability that a positive frame scores higher than a negative one (ties count half); NaN
    without both classes."""
    s, p = np.asarray(scores, float), np.asarray(positive, bool)
    ok = np.isfinite(s)
    s, p = s[ok], p[ok]
    n1, n0 = int(p.sum()), int((~p).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    from scipy.stats import rankdata

    r = rankdata(s)
    return float((r[p].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def validate(estimate: Sequence[float], level: Sequence[int], accuracy: Sequence[float], miou: Sequence[float],
             domains: Sequence[str], source_miou: Optional[Sequence[float]] = None, window: int = 10,
             warn: int = 1, source_estimate: Optional[Sequence[float]] = None,
             gain_offset: float = 0.0, kept: Optional[Sequence[float]] = None,
             min_kept: float = float("nan")) -> dict[str, Any]:
    """Every score of the module docstring for one run (per-frame lists in stream order);
    ``gain_offset``: the method's calibrated offset of the estimated gain (``runtime.quality``);
    ``kept``: the live share of the source model's classes kept (NaN: not known) and ``min_kept``
    the method's threshold on it."""
    est, acc, mi = (np.asarray(v, float) for v in (estimate, accuracy, miou))
    lev = np.asarray(level, int)
    dom = np.asarray(domains)
    out: dict[str, Any] = {
        "frames": int(len(est)),
        "spearman_accuracy": spearman(est, acc), "spearman_miou": spearman(est, mi),
        "spearman_accuracy_window": spearman(window_means(est, window), window_means(acc, window)),
        "spearman_miou_window": spearman(window_means(est, window), window_means(mi, window)),
        "window": int(window),
        "mae_points": float(100 * np.nanmean(np.abs(est - acc))) if len(est) else float("nan"),
        "bias_points": float(100 * np.nanmean(est - acc)) if len(est) else float("nan"),
        "mae_points_by_phase": {str(d): float(100 * np.nanmean(np.abs(est - acc)[dom == d]))
                                for d in dict.fromkeys(dom.tolist())},
        "levels": {name: int((lev == i).sum()) for i, name in enumerate(("OK", "WARN", "ERROR"))},
    }
    if source_miou is not None:
        src = np.asarray(source_miou, float)
        below = (mi < src) & np.isfinite(src) & np.isfinite(mi)
        out["below_source_frames"] = int(below.sum())
        out["auroc_below_source"] = auroc(-est, below)  # a lower estimate should flag them
        flagged = lev >= warn
        out["warn_recall_below_source"] = float(flagged[below].mean()) if below.any() else float("nan")
        out["warn_rate_other_frames"] = float(flagged[~below].mean()) if (~below).any() else float("nan")
        if source_estimate is not None:  # the estimated gain over the source model: lower flags them
            gain = est - np.asarray(source_estimate, float) - float(gain_offset)
            out["auroc_below_source_gain"] = auroc(-gain, below)
            # the node's flag (quality_source_every: 1, quality_gain_warn_below: 0): a gain below 0
            out["gain_recall_below_source"] = float((gain[below] < 0).mean()) if below.any() else float("nan")
            out["gain_rate_other_frames"] = float((gain[~below] < 0).mean()) if (~below).any() else float("nan")
            # the same over ``window``-frame means (what /diagnostics' quality_gain shows), at the default
            # threshold and at two higher ones (how much recall a higher quality_gain_warn_below buys)
            g, d = window_means(gain, window), window_means(mi - src, window)
            wb = (d < 0) & np.isfinite(d)
            out["auroc_below_source_gain_window"] = auroc(-g, wb)
            for t in GAIN_THRESHOLDS:
                out[f"gain_recall_below_source_window@{t:g}"] = float((g[wb] < t).mean()) if wb.any() else float("nan")
                out[f"gain_rate_other_windows@{t:g}"] = float((g[~wb] < t).mean()) if (~wb).any() else float("nan")
        kp = np.asarray(kept, float) if kept is not None and len(kept) == len(est) else None
        if kp is not None and np.isfinite(kp).any():  # the classes kept: lower flags them (NaN: no flag)
            out["kept_known_frames"] = float(np.isfinite(kp).mean())
            out["auroc_below_source_kept"] = auroc(-kp, below)
            flag = kp < float(min_kept)
            out["kept_recall_below_source"] = float(flag[below].mean()) if below.any() else float("nan")
            out["kept_rate_other_frames"] = float(flag[~below].mean()) if (~below).any() else float("nan")
            # the node's flag against the source model, gain or kept (what it adds to the level)
            both = flag | (gain < 0) if source_estimate is not None else flag
            out["source_recall_below_source"] = float(both[below].mean()) if below.any() else float("nan")
            out["source_rate_other_frames"] = float(both[~below].mean()) if (~below).any() else float("nan")
    return out


def finite_or_none(d: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy: NaN -> None (recursively)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = finite_or_none(v)
        elif isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        else:
            out[k] = v
    return out


class QualityScore:
    """One run's per-frame estimate, level and true pixel accuracy (the mIoU and phase of each frame
    are the run's ``series_y`` / ``series_domain``)."""

    def __init__(self):
        self.estimate: list[float] = []
        self.level: list[int] = []
        self.accuracy: list[float] = []
        self.kept: list[float] = []

    def update(self, quality: Any, accuracy: float) -> None:
        self.estimate.append(float(quality.estimate) if quality is not None else float("nan"))
        self.level.append(int(quality.level) if quality is not None else -1)
        self.accuracy.append(float(accuracy))
        self.kept.append(float(getattr(quality, "kept", float("nan"))))

    def fields(self) -> dict[str, Any]:
        return {"series_quality": self.estimate, "series_level": self.level, "series_accuracy": self.accuracy,
                "series_kept": self.kept}

    def state_dict(self) -> dict[str, Any]:
        return {"estimate": list(self.estimate), "level": list(self.level), "accuracy": list(self.accuracy),
                "kept": list(self.kept)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.estimate, self.level, self.accuracy = (list(state[k]) for k in ("estimate", "level", "accuracy"))
        self.kept = [float(v) for v in state.get("kept", [float("nan")] * len(self.estimate))]
