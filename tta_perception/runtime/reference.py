"""The frozen source model beside the adapted one: its output on the frames that judge adaptation
against not adapting at all.

What a driving stack most needs to know is whether the adapted output is worse than the unadapted
model's would be (RDumb, NeurIPS 2023: on long streams most continual methods end there). The
estimate of the adapted output alone cannot say it: it is lowest at night and in rain, where
adaptation gains the most. The same estimate of the *source* model's output on the same frame can:
their difference, the estimated gain, flags the frames whose true mIoU is below the source model's
(AUROC 0.90-0.97 over an hour of driving, docs/benchmark.md). It costs one forward pass of the source
model per frame judged, so it runs every ``every`` frames of each camera (0: never; the node's
default), and the collapse guard's checks reuse its output when they fall on the same frame.

The gain misses a slow collapse (Tent over an hour: AUROC 0.68): a model that stops painting the
small classes loses little pixel accuracy, and the estimate follows pixel accuracy. What sees it is
which classes survive (``kept``, :func:`classes_kept`, the collapse guard's signal): on the judged
frames the source model is reliable on, the share of the classes it paints that the published output
still paints, averaged per camera over the last :data:`KEPT_WINDOW` such frames (one frame says
little: a healthy method loses a thin class now and then).
"""
from __future__ import annotations

import collections
import copy
from typing import Any, Optional

from .quality import BLIND_CONTRAST, QualityEstimator, load_calibration

KEPT_MIN_SHARE = 0.01   # a class the source model paints on less of the frame is not counted
KEPT_AREA = 0.5         # a class is kept while the adapted output paints at least this share of the source's area
KEPT_WINDOW = 6         # reliable frames averaged (the guard's default window, as the calibration measured it)
SOURCE_RELIABLE = 0.75  # the source model's estimated accuracy (or confidence) from which it is a reference


def classes_kept(pred: Any, source_pred: Any, num_classes: int) -> float:
    """``kept`` of two label maps (H, W) of one frame: the share of the classes the source model paints
    on at least ``KEPT_MIN_SHARE`` of the frame that ``pred`` still paints on at least ``KEPT_AREA`` of
    the source's area; 1.0 when the source model paints no such class."""
    import torch

    n = torch.bincount(pred.reshape(-1).long(), minlength=num_classes)[:num_classes]
    ns = torch.bincount(source_pred.reshape(-1).long(), minlength=num_classes)[:num_classes]
    counted = ns >= KEPT_MIN_SHARE * source_pred.numel()
    if not bool(counted.any()):
        return 1.0
    return float((n[counted] >= KEPT_AREA * ns[counted]).float().mean())


def source_model(adapter: Any) -> Any:
    """A frozen copy of the adapter's model in its source state (eval, BN with source statistics)."""
    from ..engine.model_utils import set_bn_mode

    method = adapter.method
    model = copy.deepcopy(method.model)
    model.load_state_dict(method._source["modules"]["model"], strict=True)
    set_bn_mode(model, "source")
    model.eval().requires_grad_(False)
    return model


class SourceReference:
    """The source model's output and quality estimate on every ``every``-th frame of each camera.

    ``estimator``: a ``runtime.quality.QualityEstimator`` with the *source* model's calibration (the
    source model's estimate of its own output; an uncalibrated one gives its mean confidence)."""

    def __init__(self, adapter: Any, estimator: Any, every: int = 1, model: Any = None):
        if int(every) < 1:
            raise ValueError(f"the source reference runs every N >= 1 frames, got {every}")
        self.every = int(every)
        self.estimator = estimator
        self.model = model if model is not None else source_model(adapter)
        self._seen: dict[str, int] = {}
        self._kept: dict[str, collections.deque] = {}  # per camera: kept on its last reliable judged frames

    def due(self, cameras: list[str]) -> list[bool]:
        """Count one frame of each camera; whether each is judged (its camera's ``every``-th)."""
        out = []
        for c in cameras:
            n = self._seen[c] = self._seen.get(c, 0) + 1
            out.append(n % self.every == 0)
        return out

    def logits(self, x: Any) -> Any:
        """The source model's logits (N, C, H, W) on frames ``x`` (N, 3, H, W)."""
        import torch

        with torch.no_grad():
            return self.model(x.to(next(self.model.parameters()).device).float())

    def estimate(self, signals: dict[str, float]) -> float:
        """The source model's estimated accuracy from its output's ``quality.frame_signals``."""
        return float(self.estimator.estimate(signals))

    def kept(self, camera: str, output: Any, source: Any, signals: dict[str, float], source_estimate: float) -> float:
        """The mean ``kept`` of ``camera``'s published outputs over its last :data:`KEPT_WINDOW` judged
        frames the source model is reliable on, this one (``output``, ``source``: logits (C, H, W);
        ``signals``: the source output's ``frame_signals``) included when it is; NaN until there are
        that many. A blind frame or an unreliable source model adds nothing."""
        window = self._kept.setdefault(camera, collections.deque(maxlen=KEPT_WINDOW))
        if source_estimate >= SOURCE_RELIABLE and signals.get("contrast", 1.0) >= BLIND_CONTRAST \
                and not signals.get("nonfinite", 0.0):
            window.append(classes_kept(output.argmax(0), source.argmax(0), int(output.shape[0])))
        return sum(window) / len(window) if len(window) == window.maxlen else float("nan")

    def forget(self) -> None:
        """The adapted state changed (a reset, a recovery): what its outputs kept says nothing about the new one."""
        self._kept.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"seen": dict(self._seen), "kept": {c: list(w) for c, w in self._kept.items()}}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        self._seen = {str(k): int(v) for k, v in (state or {}).get("seen", {}).items()}
        self._kept = {str(c): collections.deque((float(v) for v in w), maxlen=KEPT_WINDOW)
                      for c, w in (state or {}).get("kept", {}).items()}


def build_reference(adapter: Any, model_name: str, every: int, share: Any = None) -> Optional[SourceReference]:
    """The reference of the node parameter ``quality_source_every`` (and ``bench
    --quality-source-every``): None when 0 or for a method that does not adapt (its gain is 0). The
    source model judges itself with the embedded model's source calibration (as the collapse guard
    does); ``share``: a frozen source model already made (the guard's), so the process holds one."""
    if int(every) <= 0 or not bool(getattr(adapter.method, "ADAPTS", True)):
        return None
    cal = load_calibration(model_name or "", "source")[0]
    return SourceReference(adapter, QualityEstimator(cal), int(every), model=share)
