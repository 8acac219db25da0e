"""How far to trust one output, without labels: an estimate of the published segmentation's pixel
accuracy in [0, 1] and a level (OK / WARN / ERROR), computed beside every prediction.

**Signals** (:func:`frame_signals`, from what the prediction already holds, on every second pixel
each way): ``conf`` the mean max-softmax, ``ent`` the mean normalised entropy, ``pred_ent`` the
entropy of the frame's predicted class histogram (normalised; a model that fails under a shift
paints the frame with a few classes), and from the input image ``lum`` (mean luminance),
``contrast`` (its standard deviation) and ``sharp`` (mean absolute neighbour difference). Which of
them the estimate uses, and with which weights, is in the calibration; ``bench.quality_signals``
measures the candidates.

**Estimate**: ``sigmoid(w0 + sum_k w_k * t_k(signal_k))`` with ``t`` the logit for probabilities,
the identity otherwise, fitted by least squares in logit space (``fit``) on labelled *source* data
only: frames of the training worlds, clean and under generic corruptions (noise, blur, contrast,
darkening; never the weather sequences that are tested), seen by the method itself adapting online
over them (``tta-perception calibrate-quality``). An adapting model's confidence does not mean what
the source model's does (DPLOT is 97 % sure of every night frame), so each method has its own
calibration; a method without one uses the source model's, and a model without any calibration
publishes its mean confidence, marked uncalibrated.

**Levels**: OK at an estimate >= ``warn_below``, WARN below it, ERROR below ``error_below``; ERROR
also for a non-finite output and a blind camera (an image with no contrast: a lens cap, a frozen
all-black frame), whatever the estimate says.

**Gain over the source model** (on the frames a ``runtime.reference.SourceReference`` judges): the
estimate minus the source model's estimate of its own output on the same frame, minus the
calibration's ``gain_offset`` (the median error of that difference against the true accuracy gain on
the calibration stream: two separately fitted estimates do not err alike; 0 without one). The
estimate alone is lowest where adaptation helps most (night, rain); the gain says whether the adapted
output is worse than not adapting. Below ``gain_warn_below`` (default 0: estimated worse than the
source model) an OK frame becomes WARN. On the same frames, ``kept``: the share of the source model's
classes the outputs still paint (``runtime.reference``), a camera's mean over its last reliable
judged frames; below ``min_kept`` an OK frame becomes WARN. That is off by default (``min_kept`` 0):
at the method's calibrated guard threshold it flags 31 % of BN's healthy frames and as many of
Tent's frames above the source model as below it (docs/benchmark.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

FORMAT = "tta_perception.quality/1"
LEVELS = ("OK", "WARN", "ERROR")
OK, WARN, ERROR = 0, 1, 2
SIGNALS = ("conf", "ent", "pred_ent", "lum", "contrast", "sharp")
PROBABILITIES = ("conf",)           # signals fitted through their logit
WARN_BELOW = 0.75                   # estimated pixel accuracy (docs/node.md "Quality")
ERROR_BELOW = 0.5
GAIN_WARN_BELOW = 0.0               # estimated gain over the source model: below it, at least WARN
FROM_CALIBRATION = -1.0             # a threshold parameter left at this takes the calibration's value
BLIND_CONTRAST = 0.01               # luminance std in [0, 1]: below it the camera sees nothing
KEPT_DEFAULT = 0.8                  # min_kept without a calibration that measured it: the lowest of the embedded models' methods
EPS = 1e-4


@dataclass(frozen=True)
class Quality:
    """The quality of one output: ``estimate`` (estimated pixel accuracy in [0, 1]; NaN when the
    output is not finite), ``level`` (index into :data:`LEVELS`), ``reason`` (why ERROR was forced,
    else ''), ``calibrated`` (False: the estimate is the plain mean confidence), the signals, and
    ``source_estimate`` (the source model's estimate on the same frame; NaN: not judged), ``gain``
    (``estimate - source_estimate - gain_offset``, the estimated accuracy gained by adapting) and
    ``kept`` (the camera's recent mean share of the source model's classes kept; NaN: not known)."""

    estimate: float
    level: int
    reason: str = ""
    calibrated: bool = True
    signals: dict = field(default_factory=dict)
    source_estimate: float = float("nan")
    gain: float = float("nan")  # the estimated gain over the source model (NaN: not judged)
    kept: float = float("nan")  # the recent mean share of the source model's classes kept (NaN: not known)

    @property
    def level_name(self) -> str:
        return LEVELS[self.level]


def calibrated_min_kept(calibration: Optional[dict[str, Any]]) -> Optional[float]:
    """The threshold of the mean ``kept`` from a method's quality calibration (``guard_signals``,
    written by ``calibrate-quality``): the 1st percentile of the healthy method's window mean on the
    calibration stream (source data), rounded down to 0.05; None when it was not measured."""
    p = ((calibration or {}).get("guard_signals") or {}).get("kept_mean_p1")
    if not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        return None
    return math.floor(float(p) * 20.0 + 1e-9) / 20.0


def _logit(p: float) -> float:
    p = min(max(float(p), EPS), 1.0 - EPS)
    return math.log(p / (1.0 - p))


def transform(name: str, value: float) -> float:
    return _logit(value) if name in PROBABILITIES else float(value)


def frame_signals(logits: Any, image: Any = None, step: int = 2) -> dict[str, float]:
    """The signals of one output (C, H, W) (logits or log-probabilities; (C,) for classification)
    and its input image (3, H, W) in [0, 1] (None: no image signals). ``nonfinite``: 1.0 when some
    logits are NaN/Inf (those pixels are left out)."""
    import torch

    z = logits.detach().float()
    if z.dim() == 3 and step > 1:
        z = z[:, ::step, ::step]
    c = int(z.shape[0])
    z = z.reshape(c, -1).t().contiguous()  # (pixels, classes): the reductions over classes run along memory
    finite = torch.isfinite(z).all(1)
    out: dict[str, float] = {"nonfinite": float(not bool(finite.all()))}
    if out["nonfinite"] and not bool(finite.any()):
        out.update(conf=float("nan"), ent=float("nan"), pred_ent=float("nan"))
    else:
        if out["nonfinite"]:
            z = z[finite]
        logp = z.log_softmax(1)
        p = logp.exp()
        top = logp.max(1)  # the most probable class and its log-probability (argmax of the logits)
        out["conf"] = float(top.values.exp().mean())
        out["ent"] = float(-(p * logp).sum(1).mean() / math.log(max(c, 2)))
        hist = torch.bincount(top.indices, minlength=c).double()
        h = hist[hist > 0] / hist.sum()
        out["pred_ent"] = float(-(h * h.log()).sum() / math.log(max(c, 2)))
    if image is not None:
        im = image.detach().float()
        if step > 1:
            im = im[..., ::step, ::step]
        lum = im.mean(0) if im.dim() == 3 else im
        out["lum"] = float(lum.mean())
        out["contrast"] = float(lum.std()) if lum.numel() > 1 else 0.0
        dy = (lum[1:, :] - lum[:-1, :]).abs().mean() if lum.shape[0] > 1 else lum.new_zeros(())
        dx = (lum[:, 1:] - lum[:, :-1]).abs().mean() if lum.shape[1] > 1 else lum.new_zeros(())
        out["sharp"] = float(dx + dy)
    return out


def batch_signals(logits: Any, images: Any = None, step: int = 2) -> list[dict[str, float]]:
    """:func:`frame_signals` of N segmentation outputs (N, C, H, W) and their inputs (N, 3, H, W) in
    one pass (the same values up to float rounding); per frame where one is not finite, or not 4-D."""
    import torch

    n = int(logits.shape[0])
    per_frame = lambda: [frame_signals(logits[i], None if images is None else images[i], step)  # noqa: E731
                         for i in range(n)]
    if logits.dim() != 4 or n == 1:
        return per_frame()
    z = logits.detach().float()
    if step > 1:
        z = z[:, :, ::step, ::step]
    c = int(z.shape[1])
    z = z.reshape(n, c, -1).transpose(1, 2).contiguous()  # (N, pixels, classes)
    if not bool(torch.isfinite(z).all()):
        return per_frame()
    logp = z.log_softmax(2)
    p = logp.exp()
    top = logp.max(2)
    norm = math.log(max(c, 2))
    cols = {"conf": top.values.exp().mean(1), "ent": -(p * logp).sum(2).mean(1) / norm}
    hist = torch.zeros(n, c, dtype=torch.float64).scatter_add_(1, top.indices, torch.ones_like(top.indices, dtype=torch.float64))
    h = hist / hist.sum(1, keepdim=True)
    cols["pred_ent"] = -torch.where(h > 0, h * h.clamp_min(1e-300).log(), torch.zeros_like(h)).sum(1) / norm
    if images is not None:
        im = images.detach().float()
        if step > 1:
            im = im[..., ::step, ::step]
        lum = im.mean(1)  # (N, h, w)
        flat = lum.reshape(n, -1)
        cols["lum"] = flat.mean(1)
        cols["contrast"] = flat.std(1) if flat.shape[1] > 1 else torch.zeros(n)
        dy = (lum[:, 1:, :] - lum[:, :-1, :]).abs().mean((1, 2)) if lum.shape[1] > 1 else torch.zeros(n)
        dx = (lum[:, :, 1:] - lum[:, :, :-1]).abs().mean((1, 2)) if lum.shape[2] > 1 else torch.zeros(n)
        cols["sharp"] = dx + dy
    values = {k: v.double().cpu().tolist() for k, v in cols.items()}
    return [{"nonfinite": 0.0, **{k: float(v[i]) for k, v in values.items()}} for i in range(n)]


def fit(signals: Sequence[dict[str, float]], accuracy: Sequence[float], features: Sequence[str]) -> list[float]:
    """Least-squares weights (intercept first) of logit(accuracy) on the transformed ``features``."""
    x = np.array([[1.0] + [transform(f, s[f]) for f in features] for s in signals], dtype=np.float64)
    y = np.array([_logit(a) for a in accuracy], dtype=np.float64)
    if len(y) < len(features) + 2:
        raise ValueError(f"calibration needs more than {len(features) + 1} frames, got {len(y)}")
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    return [float(v) for v in w]


def check_calibration(cal: Any) -> dict[str, Any]:
    """A calibration read from a manifest or file, validated (one-line errors)."""
    if not isinstance(cal, dict) or cal.get("format") != FORMAT:
        raise ValueError(f"not a quality calibration (format {FORMAT!r})")
    feats = cal.get("features")
    weights = cal.get("weights")
    if not isinstance(feats, list) or not all(f in SIGNALS for f in feats):
        raise ValueError(f"quality calibration: features must be a list of {', '.join(SIGNALS)}")
    if not isinstance(weights, list) or len(weights) != len(feats) + 1 or \
            not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
        raise ValueError("quality calibration: weights must be len(features) + 1 finite numbers")
    off = cal.get("gain_offset", 0.0)
    if isinstance(off, bool) or not isinstance(off, (int, float)) or not -1.0 <= off <= 1.0:
        raise ValueError("quality calibration: gain_offset must be a number in [-1, 1]")
    return cal


class QualityEstimator:
    """Per-frame quality of one method's outputs (module docstring).

    ``calibration``: the method's entry (``check_calibration``); None: uncalibrated (the estimate
    is the mean confidence). ``warn_below`` / ``error_below``: level thresholds on the estimate
    (None: the calibration's, else :data:`WARN_BELOW` / :data:`ERROR_BELOW`); ``gain_warn_below`` /
    ``min_kept``: on the gain and on ``kept`` (0: ``kept`` never flags; -1: the calibration's)."""

    def __init__(self, calibration: Optional[dict[str, Any]] = None, warn_below: Optional[float] = None,
                 error_below: Optional[float] = None, step: int = 2, gain_warn_below: float = GAIN_WARN_BELOW,
                 min_kept: float = 0.0):
        self.calibration = check_calibration(calibration) if calibration is not None else None
        cal = self.calibration or {}
        self.features: list[str] = list(cal.get("features", []))
        self.weights: list[float] = [float(w) for w in cal.get("weights", [])]
        self.warn_below = float(warn_below if warn_below is not None else cal.get("warn_below", WARN_BELOW))
        self.error_below = float(error_below if error_below is not None else cal.get("error_below", ERROR_BELOW))
        if not 0.0 <= self.error_below <= self.warn_below <= 1.0:
            raise ValueError(f"quality thresholds need 0 <= error_below ({self.error_below}) <= warn_below "
                             f"({self.warn_below}) <= 1")
        self.gain_warn_below = float(gain_warn_below)
        self.gain_offset = float(cal.get("gain_offset", 0.0))
        # the level's threshold on ``kept`` (0: never flags); -1: the method's calibrated guard threshold
        kept = calibrated_min_kept(self.calibration)
        self.min_kept = (kept if kept is not None else KEPT_DEFAULT) if min_kept == FROM_CALIBRATION else float(min_kept)
        if not 0.0 <= self.min_kept <= 1.0:
            raise ValueError(f"the kept threshold must be in [0, 1] (or -1: calibrated), got {min_kept}")
        if not -1.0 <= self.gain_warn_below <= 1.0:
            raise ValueError(f"the gain threshold must be in [-1, 1], got {self.gain_warn_below}")
        self.step = int(step)

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def estimate(self, signals: dict[str, float]) -> float:
        if not self.calibrated:
            return float(signals.get("conf", float("nan")))
        z = self.weights[0] + sum(w * transform(f, signals[f]) for f, w in zip(self.features, self.weights[1:]))
        return 1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0)))

    def level(self, estimate: float, gain: float = float("nan"), kept: float = float("nan")) -> int:
        """The level of an estimate and, where known, its gain over the source model and the classes kept."""
        if not math.isfinite(estimate) or estimate < self.error_below:
            return ERROR
        return WARN if estimate < self.warn_below or self.against_source(gain, kept) else OK

    def against_source(self, gain: float, kept: float) -> bool:
        """Whether the comparison with the source model flags the output (NaN: not judged, no flag)."""
        return gain < self.gain_warn_below or kept < self.min_kept

    def with_source(self, q: Quality, source_estimate: float, kept: float = float("nan")) -> Quality:
        """``q`` with the source model's estimate on the same frame, the gain and the camera's recent
        ``kept``, its level raised to WARN when the gain is below ``gain_warn_below`` or ``kept``
        below ``min_kept``."""
        import dataclasses

        gain = q.estimate - float(source_estimate) - self.gain_offset
        level = WARN if q.level < WARN and self.against_source(gain, kept) else q.level
        return dataclasses.replace(q, source_estimate=float(source_estimate), gain=gain, kept=float(kept), level=level)

    def __call__(self, logits: Any, image: Any = None) -> Quality:
        return self.judge(frame_signals(logits, image, self.step))

    def batch(self, logits: Any, images: Any = None) -> list[Quality]:
        """The quality of N outputs (N, C, H, W) of inputs (N, 3, H, W) at once (what one call per
        frame gives, in fewer, larger operations: a node answering several cameras)."""
        return [self.judge(s) for s in batch_signals(logits, images, self.step)]

    def judge(self, s: dict[str, float]) -> Quality:
        """The estimate and level of one output's signals (``frame_signals``)."""
        reason = ""
        if s["nonfinite"] and not math.isfinite(s.get("conf", float("nan"))):
            return Quality(float("nan"), ERROR, "non-finite output", self.calibrated, s)
        try:
            est = self.estimate(s)
        except (KeyError, ValueError, OverflowError):
            est = float("nan")
        level = self.level(est)
        if s["nonfinite"]:
            level, reason = ERROR, "non-finite output"
        elif s.get("contrast", 1.0) < BLIND_CONTRAST:
            level, reason = ERROR, "blind camera (no contrast in the image)"
        return Quality(est, level, reason, self.calibrated, s)


class LevelTracker:
    """The level of a camera's recent outputs, what /diagnostics shows and the node logs once per
    change: ERROR while the newest frame has a forced reason (blind, non-finite), else the level of
    the mean estimate over the last ``window`` frames, the mean gain of those of them judged against
    the source model and the ``kept`` of the newest of them (already a mean over the camera's recent
    reliable frames)."""

    def __init__(self, estimator: QualityEstimator, window: int = 10):
        import collections

        self.estimator = estimator
        self._est: "collections.deque[float]" = collections.deque(maxlen=max(1, int(window)))
        self._gain: "collections.deque[float]" = collections.deque(maxlen=max(1, int(window)))
        self._kept: "collections.deque[float]" = collections.deque(maxlen=max(1, int(window)))
        self.level: Optional[int] = None
        self.reason = ""
        self.changes = 0
        self.counts = dict.fromkeys(LEVELS, 0)

    @property
    def mean(self) -> float:
        vals = [v for v in self._est if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else float("nan")

    @property
    def gain(self) -> float:
        """The mean estimated gain over the source model of the recent frames judged against it (NaN: none)."""
        vals = [v for v in self._gain if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else float("nan")

    @property
    def kept(self) -> float:
        """The ``kept`` of the newest frame in the window judged against the source model (NaN: none, or not known)."""
        return next((v for v, g in zip(reversed(self._kept), reversed(self._gain)) if math.isfinite(g)), float("nan"))

    def update(self, q: Quality) -> Optional[tuple[Optional[int], int]]:
        """Add one frame's quality; (old, new) when the level changed (old None: the first frame)."""
        self.counts[q.level_name] += 1
        self._est.append(q.estimate)
        self._gain.append(q.gain)
        self._kept.append(q.kept)
        self.reason = q.reason
        new = ERROR if q.reason else self.estimator.level(self.mean, self.gain, self.kept)
        old, self.level = self.level, new
        if old == new:
            return None
        self.changes += old is not None
        return old, new


def load_calibration(model: str, method: str, path: str = "") -> tuple[Optional[dict[str, Any]], str]:
    """(calibration, where it came from) for ``method`` on the embedded model ``model``: the JSON at
    ``path`` (one calibration, or ``{method: calibration}``), else the model's manifest entry
    (``tta-perception calibrate-quality``), the method's own or else the source model's; (None, why)
    when there is none (the estimate is then the uncalibrated mean confidence)."""
    from .errors import ConfigError

    if path:
        from .model_loader import read_calibration_json

        label = "parameter 'quality_calibration'"
        data = read_calibration_json(path, "quality_calibration")
        if isinstance(data, dict) and data.get("format") != FORMAT and method in data:
            data = data[method]
        try:
            return check_calibration(data), f"{path} ({method})"
        except ValueError as err:
            raise ConfigError(f"{label}: {path!r}: {err}") from None
    from ..models.checkpoint import read_manifest

    table = (read_manifest().get((model or "").strip()) or {}).get("quality_calibration") or {}
    for key, note in ((method, ""), ("source", " (the source model's: none for this method)")):
        if key in table:
            return check_calibration(table[key]), f"manifest {model} {key}{note}"
    return None, f"no quality calibration for {model or 'this model'}: the estimate is the mean confidence (uncalibrated)"
