"""Temporal consistency of segmentation: label flicker between consecutive frames.

Flicker of a frame = the share of pixels whose predicted class differs from the previous frame's
prediction warped to this frame along the optical flow, counted only where (a) the flow is valid
and (b) the ground truth does not change: the previous ground truth warped the same way equals the
current one (so real changes, flow errors at object edges and newly uncovered pixels are not
counted) and it is labelled. Lower is steadier; a tracker downstream suffers what is counted here.

Accumulated per domain as pixel counts (the share over all counted pixels of a phase, not a mean of
per-frame shares), like the mIoU. The warping itself lives with the flow (``engine.temporal``);
this module only counts, on maps already warped.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np

from ..world.classes import IGNORE_INDEX


def flicker_counts(pred: np.ndarray, prev_pred_warped: np.ndarray, labels: np.ndarray,
                   prev_labels_warped: np.ndarray, valid: np.ndarray) -> tuple[int, int]:
    """(changed, counted) pixels of one frame (see the module doc)."""
    pred, prev = np.asarray(pred), np.asarray(prev_pred_warped)
    lab, prev_lab = np.asarray(labels), np.asarray(prev_labels_warped)
    if not (pred.shape == prev.shape == lab.shape == prev_lab.shape == np.shape(valid)):
        raise ValueError("flicker: prediction, labels and validity must have the same shape")
    counted = np.asarray(valid, bool) & (lab == prev_lab) & (lab != IGNORE_INDEX)
    return int((counted & (pred != prev)).sum()), int(counted.sum())


class Flicker:
    """Label flicker % per domain and over the stream (NaN where nothing was counted)."""

    def __init__(self) -> None:
        self.changed: Counter[str] = Counter()
        self.counted: Counter[str] = Counter()
        self.frames: Counter[str] = Counter()

    def add(self, pred, prev_pred_warped, labels, prev_labels_warped, valid, domain: str) -> Optional[float]:
        """Count one frame; returns its flicker % (None when no pixel counted)."""
        ch, n = flicker_counts(pred, prev_pred_warped, labels, prev_labels_warped, valid)
        self.changed[domain] += ch
        self.counted[domain] += n
        self.frames[domain] += 1
        return 100.0 * ch / n if n else None

    def add_along(self, pred, labels, prev_pred, prev_labels, motion, warp, domain: str) -> Optional[float]:
        """Count one frame against the previous frame's prediction and labels, both resampled into this
        frame along ``motion`` by ``warp(map, motion) -> (warped, valid)`` (``engine.temporal.warp_nearest``:
        the flow lives there, this module only counts)."""
        warped, valid = warp(prev_pred, motion)
        warped_labels, _ = warp(prev_labels, motion)
        return self.add(pred, warped, labels, warped_labels, valid, domain)

    def merge(self, other: "Flicker") -> "Flicker":
        """Pool another stream's pixels into this one (several cameras); returns self."""
        self.changed.update(other.changed)
        self.counted.update(other.counted)
        self.frames.update(other.frames)
        return self

    def annotate(self, table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """Add ``flicker`` to each domain's cell of a ``{domain: {...}, 'all': {...}}`` table."""
        per = self.domains()
        for d, cell in table.items():
            cell["flicker"] = self.overall() if d == "all" else per.get(d, float("nan"))
        return table

    def state_dict(self) -> dict[str, dict[str, int]]:
        """The pixel counts per domain (plain dicts: a checkpoint of a long run)."""
        return {"changed": dict(self.changed), "counted": dict(self.counted), "frames": dict(self.frames)}

    def load_state_dict(self, state: dict[str, dict[str, int]]) -> None:
        self.changed, self.counted, self.frames = (Counter({d: int(n) for d, n in state[k].items()})
                                                   for k in ("changed", "counted", "frames"))

    def domains(self) -> dict[str, float]:
        return {d: (100.0 * self.changed[d] / n if n else float("nan")) for d, n in self.counted.items()}

    def overall(self) -> float:
        n = sum(self.counted.values())
        return 100.0 * sum(self.changed.values()) / n if n else float("nan")
