"""Domain memory: recognise a weather (a domain) the stream has seen before and resume what the
method learned there, instead of relearning it from scratch every evening.

**Shift detector** (label-free, a few hundred values per frame). The features of a frame are the
per-channel mean and log-variance of the input of the model's first BatchNorm layer (what the stem
convolution makes of the image: its brightness, contrast and colour per filter), which the
prediction computes anyway. They are standardised with the statistics of *clear source* frames
(``calibrate``: rendered from the training worlds, never a test stream), so a distance is measured
in units of the natural variation of the source domain: the RMS of the standardised differences.
A frame belongs to the nearest known domain when it is within ``threshold`` of its centroid; the
threshold is the 99th percentile of clear source frames' distance to their own centroid, so a
frame farther than that from every known domain is unlike anything seen. Hysteresis: the domain
changes only after ``patience`` consecutive frames point to the same other (or to a new) domain,
so a single odd frame never switches. Known domains' centroids follow their frames (EMA).

On the embedded world's ``dynamic`` sequence (stride 10), in units of the threshold, the phase
centroids are 2.5 (rain), 3.2 (fog), 2.3 (night) from clear; rain-fog 1.1; night-night rain 0.6
(the stem cannot tell them apart: they share one domain); dusk 1.2 from clear.

**Domain bank**: the method's whole adapted state (``state_dict``: student, teachers, BatchNorm
statistics, optimiser state) per domain id, on the CPU, bounded by ``max_domains`` and a memory
budget (the least recently used domain is forgotten first; never the current one).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, fields
from typing import Any, Optional

import numpy as np

FORMAT = "tta_perception.engine.domains/1"


@dataclass
class Decision:
    domain: int            # the current domain id (after this frame)
    new: bool              # this frame started a domain never seen before
    switched: bool         # this frame changed the domain (to a known or a new one)
    previous: int          # the domain before this frame (-1: none yet)
    distance: float        # this frame's distance to the current domain, in threshold units
    frames_in_domain: int  # frames since the current domain began
    nearest: int = -1      # a new domain: the closest known one (where its state starts from)


def frame_features(x) -> np.ndarray:
    """Per-channel mean and log-variance of one activation map (1, C, H, W) or (C, H, W)."""
    import torch

    x = x.detach().float()
    if x.dim() == 4:
        x = x[0]
    flat = x.reshape(x.shape[0], -1)
    return torch.cat([flat.mean(1), flat.var(1).clamp_min(1e-6).log()]).cpu().numpy().astype(np.float64)


class ShiftDetector:
    """Which domain each frame belongs to (see the module docstring)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, threshold: float, patience: int = 3,
                 momentum: float = 0.05):
        if threshold <= 0 or patience < 1 or not 0 < momentum <= 1:
            raise ValueError("need threshold > 0, patience >= 1, 0 < momentum <= 1")
        self.mean, self.std = np.asarray(mean, np.float64), np.maximum(np.asarray(std, np.float64), 1e-6)
        self.threshold, self.patience, self.momentum = float(threshold), int(patience), float(momentum)
        self.centroids: dict[int, np.ndarray] = {}
        self.counts: dict[int, int] = {}
        self.current = -1
        self.next_id = 0
        self.frames_in_domain = 0
        self._candidate: Optional[int] = None  # -1: a new domain
        self._streak: list[np.ndarray] = []    # the frames pointing to the candidate

    def _z(self, feat: np.ndarray) -> np.ndarray:
        return (np.asarray(feat, np.float64) - self.mean) / self.std

    def distances(self, feat: np.ndarray) -> dict[int, float]:
        """Distance to every known domain, in threshold units."""
        z = self._z(feat)
        return {k: float(np.sqrt(np.mean((z - c) ** 2)) / self.threshold) for k, c in self.centroids.items()}

    def _new_domain(self, z: np.ndarray, frames: int = 1) -> int:
        k = self.next_id
        self.next_id += 1
        self.centroids[k] = z.copy()
        self.counts[k] = frames
        return k

    def forget(self, domain: int) -> None:
        """Drop a domain (the bank evicted its state)."""
        self.centroids.pop(domain, None)
        self.counts.pop(domain, None)

    def observe(self, feat: np.ndarray) -> Decision:
        z = self._z(feat)
        prev = self.current
        if self.current not in self.centroids:
            # the stream starts in the source domain, whose statistics the calibration measured
            self.current = self._new_domain(np.zeros_like(z), frames=10**9)
            self.frames_in_domain = 0
        dist = self.distances(feat)
        others = {k: v for k, v in dist.items() if k != self.current}
        nearest = min(others, key=others.get) if others else -1
        target: Optional[int] = None  # stay
        if dist[self.current] > 1.0:
            target = nearest if nearest >= 0 and others[nearest] <= 1.0 else -1  # -1: unlike all
        if target is None:
            self._candidate, self._streak = None, []
        elif target == self._candidate:
            self._streak.append(z)
        else:
            self._candidate, self._streak = target, [z]
        switched = new = False
        if target is not None and len(self._streak) >= self.patience:
            new = target == -1
            closest = min(dist, key=dist.get)  # where a new domain starts from: the closest known one
            # a new domain's centroid: the frames that revealed it, not one frame
            self.current = self._new_domain(np.mean(self._streak, 0), len(self._streak)) if new else target
            self._candidate, self._streak = None, []
            self.frames_in_domain = 0
            switched = True
            nearest = closest
        self.frames_in_domain += 1
        # the domain follows the frames that belong to it (never an odd one): their mean, then an EMA
        if not (switched and new) and self.distances(feat)[self.current] <= 1.0:
            n = self.counts[self.current] = self.counts[self.current] + 1
            c = self.centroids[self.current]
            c += max(self.momentum, 1.0 / n) * (z - c)
        return Decision(self.current, new, switched, prev, self.distances(feat)[self.current],
                        self.frames_in_domain, nearest)

    def state_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "threshold": self.threshold, "patience": self.patience, "momentum": self.momentum,
                "current": self.current, "next_id": self.next_id,
                "frames_in_domain": self.frames_in_domain, "counts": {str(k): v for k, v in self.counts.items()},
                "centroids": {str(k): v.tolist() for k, v in self.centroids.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError("not a shift-detector state")
        self.centroids = {int(k): np.asarray(v, np.float64) for k, v in state["centroids"].items()}
        self.counts = {int(k): int(v) for k, v in state.get("counts", {}).items()}
        self.counts.update({k: 1 for k in self.centroids if k not in self.counts})
        self.current, self.next_id = int(state["current"]), int(state["next_id"])
        self.frames_in_domain = int(state["frames_in_domain"])
        self._candidate, self._streak = None, []


def state_bytes(state: Any) -> int:
    """Bytes of the tensors in a nested state."""
    import torch

    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


class DomainBank:
    """Adapted states by domain id, least recently used forgotten first (never ``keep``)."""

    def __init__(self, max_domains: int = 8, max_mb: float = 512.0):
        self.max_domains, self.max_mb = int(max_domains), float(max_mb)
        self.states: "collections.OrderedDict[int, dict[str, Any]]" = collections.OrderedDict()

    def __contains__(self, domain: int) -> bool:
        return domain in self.states

    def __len__(self) -> int:
        return len(self.states)

    def mb(self) -> float:
        return sum(state_bytes(s) for s in self.states.values()) / float(1 << 20)

    def put(self, domain: int, state: dict[str, Any], keep: Optional[int] = None) -> list[int]:
        """Store ``state`` (CPU copies are the caller's) for ``domain``; returns the evicted ids."""
        self.states[domain] = state
        self.states.move_to_end(domain)
        evicted = []
        while len(self.states) > self.max_domains or (self.mb() > self.max_mb and len(self.states) > 1):
            victim = next((k for k in self.states if k not in (domain, keep)), None)
            if victim is None:
                break
            del self.states[victim]
            evicted.append(victim)
        return evicted

    def get(self, domain: int) -> Optional[dict[str, Any]]:
        state = self.states.get(domain)
        if state is not None:
            self.states.move_to_end(domain)
        return state

    def state_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "max_domains": self.max_domains, "max_mb": self.max_mb,
                "order": list(self.states), "states": {str(k): v for k, v in self.states.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError("not a domain-bank state")
        self.states = collections.OrderedDict((int(k), state["states"][str(k)]) for k in state["order"])


def calibrate(feats: np.ndarray, quantile: float = 99.0) -> dict[str, Any]:
    """Standardisation and threshold from features of clear source frames (N, D)."""
    feats = np.asarray(feats, np.float64)
    mean, std = feats.mean(0), feats.std(0) + 1e-3
    d = np.sqrt(np.mean(((feats - mean) / std) ** 2, axis=1))
    return {"mean": mean.tolist(), "std": std.tolist(), "threshold": float(np.percentile(d, quantile)),
            "frames": int(len(feats)), "quantile": quantile}


class DomainMemory:
    """The detector, the bank and the switch policy, for a ``StreamingAdapter``.

    The adapter calls ``watch(copies)`` once (hooks on the first BatchNorm of each inference copy
    record the frame's features during the prediction), ``observe()`` after each prediction, and
    ``switch(method, frames)`` between adaptation steps when a switch is pending, so inference never
    waits for it. A new domain starts from the nearest known domain's state or from the source
    state, whichever predicts the frames of the window with the lower mean entropy (label-free);
    ``start``: "best" (that), "nearest" or "source".
    """

    START = ("best", "nearest", "source")

    def __init__(self, detector: ShiftDetector, bank: Optional[DomainBank] = None, start: str = "best"):
        if start not in self.START:
            raise ValueError(f"start must be one of {', '.join(self.START)}, got {start!r}")
        self.detector, self.bank, self.start = detector, bank or DomainBank(), start
        self.last: Optional[Decision] = None
        self.pending: Optional[Decision] = None
        self.switches = 0
        self._feat: Optional[np.ndarray] = None
        self._handles: list[Any] = []

    def watch(self, copies: list[dict[str, Any]]) -> None:
        from .model_utils import bn_modules

        for mods in copies:
            module = mods.get("model") or next(iter(mods.values()))
            first = next(iter(bn_modules(module)), None)
            if first is None:
                raise ValueError("domain memory needs a model with BatchNorm (its features)")
            self._handles.append(first.register_forward_pre_hook(self._record))

    def _record(self, _module, inputs) -> None:
        if self._feat is None:  # the first call of a prediction (DPLOT predicts with several)
            self._feat = frame_features(inputs[0])

    def observe(self) -> Optional[Decision]:
        feat, self._feat = self._feat, None
        if feat is None:
            return None
        decision = self.detector.observe(feat)
        self.last = decision
        if decision.switched:
            self.pending = decision
        return decision

    def switch(self, method, frames) -> None:
        """Store the state of the domain that ended; continue from the new domain's."""
        from .model_utils import map_tensors

        d, self.pending = self.pending, None
        if d is None:
            return
        cpu = lambda s: map_tensors(s, lambda t: t.detach().cpu().clone())  # noqa: E731
        for gone in self.bank.put(d.previous, cpu(method.state_dict()), keep=d.domain):
            self.detector.forget(gone)
        known = self.bank.get(d.domain)
        if known is not None:
            method.load_state_dict(known, stats=False)
        else:
            method.reset(count=False)  # the source state
            near = self.bank.get(d.nearest) if d.nearest >= 0 else None
            if near is not None and self.start != "source":
                if self.start == "nearest" or _entropy(method, frames) > _entropy_with(method, near, frames):
                    method.load_state_dict(near, stats=False)
                else:
                    method.reset(count=False)
        self.switches += 1

    def stats(self) -> dict[str, Any]:
        d = self.last
        return {"domain": d.domain if d else -1, "domain_new": bool(d.new) if d else False,
                "domain_distance": d.distance if d else float("nan"),
                "frames_in_domain": d.frames_in_domain if d else 0, "domain_switches": self.switches,
                "domains_known": len(self.detector.centroids), "domains_stored": len(self.bank),
                "domain_bank_mb": self.bank.mb()}

    def state_dict(self) -> dict[str, Any]:
        # a switch the detector decided but the next adaptation step has not applied yet: saved too,
        # so a node restarted from this state banks the domain that ended (a save between the two
        # would otherwise lose that domain's adapted state)
        pending = None if self.pending is None else {f.name: getattr(self.pending, f.name) for f in fields(Decision)}
        return {"format": FORMAT, "detector": self.detector.state_dict(), "bank": self.bank.state_dict(),
                "switches": self.switches, "pending": pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError("not a domain-memory state")
        self.detector.load_state_dict(state["detector"])
        self.bank.load_state_dict(state["bank"])
        self.switches = int(state.get("switches", 0))
        pending = state.get("pending")
        self.pending = Decision(**{f.name: pending[f.name] for f in fields(Decision)}) if pending else None


def _entropy(method, frames) -> float:
    from .losses import softmax_entropy

    out = method.predict(frames)
    return float(softmax_entropy(out.float()).mean())


def _entropy_with(method, state, frames) -> float:
    method.load_state_dict(state, stats=False)
    return _entropy(method, frames)


def source_features(model, images, batch_size: int = 16) -> np.ndarray:
    """Per-image features (as the detector sees them) of source images (N, 3, H, W) in [0, 1]:
    what ``calibrate`` is fed with, from clear source data only."""
    import torch

    from .model_utils import bn_modules

    first = next(iter(bn_modules(model)), None)
    if first is None:
        raise ValueError("domain memory needs a model with BatchNorm (its features)")
    feats: list[np.ndarray] = []

    def hook(_m, inputs) -> None:
        feats.extend(frame_features(x[None]) for x in inputs[0])

    handle = first.register_forward_pre_hook(hook)
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                model(images[i:i + batch_size])
    finally:
        handle.remove()
        model.train(was)
    return np.stack(feats)


def build_memory(calibration: dict[str, Any], max_domains: int = 8, threshold: float = 0.0,
                 patience: int = 3, max_mb: float = 512.0, start: str = "best") -> DomainMemory:
    """A ``DomainMemory`` from a calibration (``calibrate``'s output); ``threshold`` > 0 overrides
    the calibrated one (same units: RMS of source-standardised differences)."""
    det = ShiftDetector(np.asarray(calibration["mean"]), np.asarray(calibration["std"]),
                        threshold if threshold > 0 else float(calibration["threshold"]), patience=patience)
    return DomainMemory(det, DomainBank(max_domains, max_mb), start=start)
