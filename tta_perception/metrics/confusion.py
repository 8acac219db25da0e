"""Confusion matrix (mIoU as in CarlaTTA, accumulated over a whole sequence or domain) and top-1
accuracy: the formulas every score of the package is computed with.

NumPy only (tensors are accepted and moved to the CPU), so the evaluator node can score without
importing torch.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..world.classes import IGNORE_INDEX


def as_array(values: Any) -> np.ndarray:
    """A NumPy view of an array or a (CPU/GPU) tensor."""
    if hasattr(values, "detach"):
        return values.detach().cpu().numpy()
    return np.asarray(values)


class ConfusionMatrix:
    """Accumulates a (C, C) confusion matrix; rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.mat = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred, target) -> None:
        pred, target = as_array(pred), as_array(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}")
        valid = (target != IGNORE_INDEX) & (target < self.num_classes) & (pred >= 0) & (pred < self.num_classes)
        idx = target[valid].astype(np.int64) * self.num_classes + pred[valid].astype(np.int64)
        self.mat += np.bincount(idx, minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.mat += other.mat

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for classes absent from both ground truth and prediction."""
        tp = np.diag(self.mat).astype(np.float64)
        union = self.mat.sum(0) + self.mat.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def accuracy(self) -> float:
        total = self.mat.sum()
        return float(np.trace(self.mat) / total) if total else float("nan")

    def state_dict(self) -> dict[str, Any]:
        """The counts as plain lists (a checkpoint loadable with ``torch.load(weights_only=True)``)."""
        return {"num_classes": self.num_classes, "mat": self.mat.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mat = np.asarray(state["mat"], np.int64)
        if mat.shape != (self.num_classes, self.num_classes):
            raise ValueError(f"confusion matrix state is {mat.shape}, expected {self.num_classes} classes")
        self.mat = mat


def frame_miou(pred, labels, num_classes: int) -> float:
    """mIoU of one frame on its own (the per-frame curve of the plots)."""
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, labels)
    return cm.miou()


class Accuracy:
    """Running top-1 accuracy of class predictions."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, pred, target) -> None:
        pred, target = as_array(pred), as_array(target)
        self.correct += int((pred == target).sum())
        self.total += int(target.size)

    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def error(self) -> float:
        return 1.0 - self.accuracy()

    def state_dict(self) -> dict[str, Any]:
        return {"correct": int(self.correct), "total": int(self.total)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.correct, self.total = int(state["correct"]), int(state["total"])
