"""Metrics: streaming confusion matrix (mIoU as in CarlaTTA, accumulated over a whole sequence or
domain) and classification error."""
from __future__ import annotations

import numpy as np
import torch

from .world.classes import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a (C, C) confusion matrix; rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.mat = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred, target) -> None:
        pred = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        target = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
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


class Accuracy:
    """Running top-1 accuracy of class predictions."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, pred, target) -> None:
        pred = torch.as_tensor(pred).cpu()
        target = torch.as_tensor(target).cpu()
        self.correct += int((pred == target).sum())
        self.total += int(target.numel())

    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def error(self) -> float:
        return 1.0 - self.accuracy()
