"""The collapse guard: notice that adaptation is leaving the network worse than not adapting, and go
back by itself (to the last state that was healthy, or to the source weights).

Long streams end with most continual methods below a non-adapting model (RDumb, NeurIPS 2023); the
engine's own check (one class >= 95 % of the predictions) never fires on a slow collapse, where the
small classes are eaten one by one. The guard watches, every ``check_every`` frames, the adapted
output beside the frozen source model's output on the same frame (one extra forward pass per check:
``check_every`` = 10 costs a tenth of a prediction per frame):

- ``agreement``: the fraction of pixels where both predict the same class;
- ``classes``: the entropy of the adapted frame's predicted class histogram divided by the source's
  (``quality.frame_signals`` ``pred_ent``): a collapsing model paints the frame with fewer classes
  than even the unadapted one does;
- ``kept``: the share of the classes the source model paints on at least ``KEPT_MIN_SHARE`` of the
  frame that the adapted output still paints on at least ``KEPT_AREA`` of the source's area
  (:func:`classes_kept`). A slow collapse eats the small classes one by one; the two signals above
  barely move then (pixel agreement is the large classes' and the entropy ratio falls by a few
  hundredths), this one counts the classes lost. One frame says little (a healthy method loses a
  thin class now and then), so it is read as the mean over the window;
- non-finite outputs (at once, on any frame).

Under a strong shift a healthy method disagrees with the source model on most pixels, because the
source model is wrong there (and sure of itself: 88 % mean confidence at 31 % accuracy in rain), so
the signals are read only on frames where the source model is *reliable*: its own estimated
accuracy (``runtime.quality`` with the source calibration; without one, its mean confidence) is at
least ``source_reliable``. There a healthy method agrees with the source on most pixels and keeps as
many classes; a check is *bad* when ``agreement`` < ``min_agreement`` or ``classes`` <
``min_class_ratio``. The guard recovers when most of the last ``window`` reliable checks were bad,
or when their mean ``kept`` is below ``min_kept``, so one odd frame never resets anything. The
thresholds are set on source data (the calibration stream of ``bench.quality``: clean frames and
generic corruptions, where the healthy methods' values are measured) and held fixed on the weather
streams; docs/node.md lists them. ``min_kept`` is the method's own: the 1st percentile of its window
mean on that stream, rounded down to 0.05 (``calibrated_min_kept``; the method's quality calibration
carries it), else ``KEPT_DEFAULT``.

Recovery: the last *healthy* state (a snapshot is promoted to healthy after ``window`` good checks
in a row after it was taken), else the source state; a healthy state that collapses again within
``window`` checks of being restored is dropped and the next recovery goes to the source. Each
recovery is counted with its reason; the caller logs it once.

Frames with a blind camera (no contrast: a lens cap) or a non-finite input never join the
adaptation window (``gate``): there is nothing to learn from them and much to lose.
"""
from __future__ import annotations

import collections
import copy
import math
from dataclasses import dataclass
from typing import Any, Optional

from .quality import BLIND_CONTRAST, FROM_CALIBRATION, KEPT_DEFAULT, calibrated_min_kept, frame_signals
from .reference import KEPT_AREA, KEPT_MIN_SHARE, SOURCE_RELIABLE, classes_kept, source_model

__all__ = ["CollapseGuard", "GuardSettings", "Recovery", "blind", "build_guard", "calibrated_min_kept", "classes_kept",
           "KEPT_AREA", "KEPT_DEFAULT", "KEPT_MIN_SHARE"]
RECOVER_TO = ("last_healthy", "source")


@dataclass
class GuardSettings:
    check_every: int = 10          # frames between two checks (one source forward each)
    window: int = 6                # checks averaged before a recovery; also the probation of a snapshot
    min_class_ratio: float = 0.75  # adapted / source class-histogram entropy on a frame the source is reliable on
    min_agreement: float = 0.5     # pixel agreement with the source on such a frame
    min_kept: float = FROM_CALIBRATION  # mean share of the source's classes kept over the window; -1: calibrated
    source_reliable: float = SOURCE_RELIABLE  # the source's estimated accuracy (or confidence) from which it is reliable
    recover_to: str = "last_healthy"

    def __post_init__(self) -> None:
        if int(self.check_every) < 1 or int(self.window) < 1:
            raise ValueError("guard check_every and window must be >= 1")
        for name in ("min_agreement", "source_reliable", "min_kept"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0 and not (name == "min_kept" and v == FROM_CALIBRATION):
                raise ValueError(f"guard {name} must be in [0, 1]{' (or -1: calibrated)' if name == 'min_kept' else ''}, got {v}")
        if not 0.0 <= float(self.min_class_ratio) <= 2.0:
            raise ValueError(f"guard min_class_ratio must be in [0, 2], got {self.min_class_ratio}")
        if self.recover_to not in RECOVER_TO:
            raise ValueError(f"guard recover_to must be one of {', '.join(RECOVER_TO)}, got {self.recover_to!r}")


@dataclass(frozen=True)
class Recovery:
    """One recovery: the reason (logged once) and where the state went ('last_healthy' / 'source')."""

    reason: str
    to: str
    frame: int


def blind(image: Any) -> bool:
    """No contrast in the image (a lens cap, an all-black or constant frame), or a non-finite pixel."""
    import torch

    im = image.detach().float()
    if not bool(torch.isfinite(im).all()):
        return True
    lum = im.mean(0) if im.dim() == 3 else im
    return float(lum[::2, ::2].std()) < BLIND_CONTRAST if lum.numel() > 4 else False


class CollapseGuard:
    """Watches one streaming adapter's outputs (module docstring); ``observe`` after each frame."""

    def __init__(self, adapter: Any, settings: Optional[GuardSettings] = None, source_quality: Any = None,
                 history: int = 0, calibration: Optional[dict[str, Any]] = None, source: Any = None):
        self.adapter = adapter
        self.s = settings or GuardSettings()
        self.source_quality = source_quality  # QualityEstimator with the source calibration (None: confidence)
        # the threshold of the mean ``kept``: the setting's, else the method's calibration's (``calibration``)
        kept = calibrated_min_kept(calibration)
        self.min_kept = (float(self.s.min_kept) if self.s.min_kept != FROM_CALIBRATION
                         else kept if kept is not None else KEPT_DEFAULT)
        # the last ``history`` checks' values (the benchmark's record of what the guard saw)
        self.history: collections.deque[dict] = collections.deque(maxlen=max(0, int(history)))
        # segmentation: the signals are per pixel (a classifier's one label per frame says too little)
        self.enabled = bool(getattr(adapter.method, "ADAPTS", True)) and adapter.method.task == "seg"
        # the frozen source model (``source``: one to share, the frame path's ``reference.SourceReference``'s)
        self._source = (source if source is not None else source_model(adapter)) if self.enabled else None
        self._checks: collections.deque[bool] = collections.deque(maxlen=int(self.s.window))
        self._kept: collections.deque[float] = collections.deque(maxlen=int(self.s.window))
        self._frames = 0                         # frames observed (all cameras)
        self._seen: dict[str, int] = {}          # per camera: frames observed (each camera is checked)
        self._candidate: Optional[dict] = None   # a snapshot on probation
        self._candidate_good = 0
        self._healthy: Optional[dict] = None
        self._restored_at: Optional[int] = None  # the check count when a healthy state was restored
        self._n_checks = 0
        self.last: dict[str, float] = {}
        self.counts = {"guard_checks": 0, "guard_bad_checks": 0, "guard_recoveries": 0, "guard_to_source": 0,
                       "guard_blind_frames": 0, "guard_nonfinite": 0, "guard_nonfinite_inputs": 0}
        self.last_reason = ""

    # ------------------------------------------------------------------ per frame
    def gate(self, image: Any) -> bool:
        """Whether a frame may join the adaptation window (False: blind or non-finite)."""
        import torch

        if not bool(torch.isfinite(image).all()):
            self.counts["guard_nonfinite_inputs"] += 1
            return False
        if blind(image):
            self.counts["guard_blind_frames"] += 1
            return False
        return True

    def observe(self, output: Any, image: Any, camera: str = "", source: Any = None) -> Optional[Recovery]:
        """One frame's output (C, H, W) of ``camera`` and its input (3, H, W); a recovery, if one
        ran. Each camera is checked every ``check_every`` of its own frames. ``source``: the source
        model's logits on this frame when the caller has them (no second forward pass)."""
        import torch

        if not self.enabled:
            return None
        self._frames += 1
        seen = self._seen[camera] = self._seen.get(camera, 0) + 1
        if not bool(torch.isfinite(output).all()):
            if not bool(torch.isfinite(image).all()):
                return None  # bad input, not a broken model (counted by gate; it never joins the window)
            self.counts["guard_nonfinite"] += 1
            return self._recover("non-finite output")
        if seen % int(self.s.check_every) or blind(image):
            return None
        if source is not None:
            src = source
        else:
            with torch.no_grad():
                src = self._source(image[None].to(next(self._source.parameters()).device).float())[0]
        a, b = frame_signals(output), frame_signals(src, image)
        pred, spred = output.argmax(0), src.argmax(0)
        agreement = float((pred == spred).float().mean())
        ratio = a["pred_ent"] / b["pred_ent"] if b["pred_ent"] > 1e-6 else 1.0
        kept = classes_kept(pred, spred, int(output.shape[0]))
        reliable = self.source_quality.estimate(b) if self.source_quality is not None else b["conf"]
        self.last = {"agreement": agreement, "class_ratio": ratio, "kept": kept, "source_reliability": reliable}
        if self.history.maxlen:
            self.history.append({"frame": self._frames, **self.last})
        self.counts["guard_checks"] += 1
        if not reliable >= self.s.source_reliable:
            return None  # the source model is no reference on this frame
        bad = ratio < self.s.min_class_ratio or agreement < self.s.min_agreement
        self.counts["guard_bad_checks"] += int(bad)
        self._n_checks += 1
        self._checks.append(bad)
        self._kept.append(kept)
        full = len(self._checks) == self._checks.maxlen
        mean_kept = sum(self._kept) / len(self._kept)
        if full and sum(self._checks) * 2 > len(self._checks):
            why = (f"adapted output lost its classes ({ratio:.2f} of the source model's class entropy)"
                   if ratio < self.s.min_class_ratio else
                   f"adapted output agrees with the source model on {100 * agreement:.0f} % of the pixels "
                   "of frames the source model is reliable on")
            return self._recover(f"collapse over the last {len(self._checks)} checks: {why}")
        if full and mean_kept < self.min_kept:
            return self._recover(f"collapse over the last {len(self._kept)} checks: the adapted output kept "
                                 f"{100 * mean_kept:.0f} % of the source model's classes on frames it is reliable on")
        self._probation(bad or mean_kept < self.min_kept)
        return None

    # ------------------------------------------------------------------ states
    def _snapshot(self) -> dict:
        from ..engine.model_utils import map_tensors

        st = self.adapter.state_dict()
        return map_tensors(st, lambda t: t.detach().to("cpu", copy=True), copy.deepcopy)

    def _probation(self, bad: bool) -> None:
        """A snapshot becomes the healthy state after ``window`` good checks in a row."""
        if bad:
            self._candidate, self._candidate_good = None, 0
            return
        if self.s.recover_to != "last_healthy":
            return
        if self._candidate is None:
            self._candidate, self._candidate_good = self._snapshot(), 0
            return
        self._candidate_good += 1
        if self._candidate_good >= int(self.s.window):
            self._healthy, self._candidate = self._candidate, self._snapshot()
            self._candidate_good = 0

    def _recover(self, reason: str) -> Recovery:
        relapse = self._restored_at is not None and self._n_checks - self._restored_at <= int(self.s.window)
        if relapse:
            self._healthy = None  # it collapsed again: it was not healthy after all
        if self._healthy is not None and self.s.recover_to == "last_healthy":
            self.adapter.load_state_dict(self._healthy, stats=False)
            to = "last_healthy"
            self._restored_at = self._n_checks
        else:
            self.adapter.reset()
            to = "source"
            self.counts["guard_to_source"] += 1
            self._restored_at = None
        self.counts["guard_recoveries"] += 1
        self._checks.clear()
        self._kept.clear()
        self._candidate, self._candidate_good = None, 0
        self.last_reason = reason
        return Recovery(reason, to, self._frames)

    def state_dict(self) -> dict[str, Any]:
        """Where the guard stands (its checks, snapshots and counters): a benchmark cell's checkpoint."""
        return {"frames": self._frames, "seen": dict(self._seen), "checks": list(self._checks),
                "kept": list(self._kept), "candidate": self._candidate,
                "candidate_good": self._candidate_good, "healthy": self._healthy, "restored_at": self._restored_at,
                "n_checks": self._n_checks, "last": dict(self.last), "counts": dict(self.counts),
                "last_reason": self.last_reason, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._frames, self._n_checks = int(state["frames"]), int(state["n_checks"])
        self._seen = {str(k): int(v) for k, v in state.get("seen", {}).items()}
        self._checks.clear()
        self._checks.extend(bool(b) for b in state["checks"])
        self._kept.clear()
        self._kept.extend(float(k) for k in state.get("kept", [1.0] * len(self._checks)))
        self._candidate, self._candidate_good = state["candidate"], int(state["candidate_good"])
        self._healthy, self._restored_at = state["healthy"], state["restored_at"]
        self.last, self.last_reason = dict(state["last"]), str(state["last_reason"])
        self.counts.update(state["counts"])
        self.history.clear()
        self.history.extend(state.get("history", []))

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "guard_last_reason": self.last_reason, "guard_min_kept": self.min_kept,
                **{f"guard_{k}": v for k, v in self.last.items() if math.isfinite(v)}}


def build_guard(adapter: Any, settings: GuardSettings, model_name: str, method: str, calibration_path: str = "",
                source: Any = None) -> CollapseGuard:
    """The guard of ``method`` on the embedded model ``model_name`` as the node and the benchmark build
    it: the source model's reliability judged with the model's source calibration, ``min_kept: -1``
    from the method's (``calibration_path``: the node's ``quality_calibration``); ``source``: a frozen
    source model already made (the quality reference's), so the process holds one."""
    from .quality import QualityEstimator, load_calibration

    cal, _ = load_calibration(model_name or "", "source")
    own, _ = load_calibration(model_name or "", method, calibration_path)
    return CollapseGuard(adapter, settings, calibration=own,
                         source_quality=QualityEstimator(cal) if cal is not None else None, source=source)
