"""Video: dense optical flow between consecutive frames of one camera, and what uses it.

A camera stream is video: consecutive frames at 10-30 Hz see nearly the same scene. This module is
the one home of the motion between frames, used by the pipeline (node, replay), the streaming
benchmark and DPLOT's temporal pseudo-labels (``docs/video.md``).

- :class:`FlowChain` (one per camera): for each new frame, the **backward flow** to the previous
  frame (OpenCV DIS at the model's input size, preset ``fast`` by default, the outside prototype's;
  1.6 ms a 128x256 frame on one core with the check, see :data:`PRESETS`) and a **validity mask**:
  a forward-backward consistency check (Sundaram et al. 2010: occlusions and bad matches fail it)
  and the border (a pixel whose match falls outside the previous frame was uncovered). The chain **breaks** (returns None) at the
  first frame, after :meth:`FlowChain.reset`, on a size change and on a time gap: a stamp step
  larger than ``gap_factor`` x the usual step (a dropped frame) or than ``max_gap_s``.
- :func:`warp` / :func:`warp_nearest`: a map of the previous frame (probabilities, logits / class
  ids) resampled into the current frame along the flow.
- :class:`MotionLog` (one per camera): the same chain keyed by message stamp, for the evaluator's
  label flicker (``metrics.StreamScorer(video=...)``).
- :class:`TemporalFusion` (one per camera): the published prediction
  ``p_t = (1 - a) softmax(z_t) + a warp(p_{t-1})`` where the flow is valid, ``softmax(z_t)``
  elsewhere and after a break (``p_{t-1}`` is the previous *fused* map, so the past decays
  geometrically). Mode ``fixed``: ``a = w``; mode ``adaptive``: ``a = w u_t`` per pixel, ``u_t`` the
  current frame's uncertainty (see :func:`uncertainty`), so a confident pixel keeps its own
  prediction. ``w = 0`` is off and returns the logits untouched.

The flow is computed on the [0, 1] model input (grey, 8 bit), so the node, the replay and the
benchmark measure the same thing. NumPy + OpenCV for the flow; torch only to warp tensors.
"""
from __future__ import annotations

import functools
import statistics
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

#: OpenCV DIS presets; ms per 128x256 frame on one core here, with / without the forward-backward
#: check (two DIS passes / one): ultrafast 1.1 / 0.5, fast 1.6 / 0.8, medium 5.5 / 2.8
#: (``python -m tta_perception.bench.temporal``, docs/video.md)
PRESETS = ("ultrafast", "fast", "medium")
DEFAULT_PRESET = "fast"
#: forward-backward check: |f(q) + b(p)|^2 <= FB_ALPHA (|f(q)|^2 + |b(p)|^2) + FB_BETA (Sundaram et al.)
FB_ALPHA, FB_BETA = 0.01, 0.5


@dataclass
class Motion:
    """How the current frame maps into the previous one.

    ``flow[y, x] = (dx, dy)``: pixel (x, y) of the current frame shows what pixel
    (x + dx, y + dy) of the previous frame showed; ``valid`` where that holds (forward-backward
    consistent, inside the previous frame)."""

    flow: np.ndarray   # (H, W, 2) float32
    valid: np.ndarray  # (H, W) bool
    ms: float = 0.0    # time to estimate it

    @property
    def shape(self) -> tuple[int, int]:
        return self.flow.shape[0], self.flow.shape[1]

    def valid_fraction(self) -> float:
        return float(self.valid.mean())

    def resized(self, size: tuple[int, int]) -> "Motion":
        """The same motion on a map of another size (vectors scaled, validity nearest)."""
        import cv2

        h, w = self.shape
        if (h, w) == tuple(size):
            return self
        flow = cv2.resize(self.flow, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        flow[..., 0] *= size[1] / w
        flow[..., 1] *= size[0] / h
        valid = cv2.resize(self.valid.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0
        return Motion(flow.astype(np.float32), valid, self.ms)


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y coordinates of every pixel (float32, read-only, cached per size)."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


def to_gray(image: Any) -> np.ndarray:
    """(3, H, W) / (1, 3, H, W) float tensor in [0, 1], or (H, W, 3) uint8 / float array -> (H, W) uint8."""
    if hasattr(image, "detach"):  # a torch tensor (the model input)
        t = image.detach()
        if t.dim() == 4:
            t = t[0]
        a = t.float().cpu().numpy()
        a = np.transpose(a, (1, 2, 0))
    else:
        a = np.asarray(image)
    if a.ndim == 2:
        g = a.astype(np.float32)
    else:
        g = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if a.dtype != np.uint8:
        g = g * 255.0
    return np.clip(g + 0.5, 0, 255).astype(np.uint8)


def _dis(preset: str):
    import cv2

    if preset not in PRESETS:
        raise ValueError(f"flow preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}"))


def estimate_motion(prev: np.ndarray, cur: np.ndarray, dis: Any = None, fb_check: bool = True) -> Motion:
    """Backward flow cur -> prev of two grey uint8 frames and its validity (see the module doc)."""
    import cv2

    t0 = time.perf_counter()
    dis = dis if dis is not None else _dis(DEFAULT_PRESET)
    prev, cur = np.ascontiguousarray(prev, np.uint8), np.ascontiguousarray(cur, np.uint8)  # DIS needs both
    back = dis.calc(cur, prev, None)
    h, w = cur.shape
    gx, gy = _pixel_grid(h, w)
    qx, qy = gx + back[..., 0], gy + back[..., 1]
    valid = (qx >= 0) & (qx <= w - 1) & (qy >= 0) & (qy <= h - 1)
    if fb_check:
        fwd = dis.calc(prev, cur, None)
        f_at_q = cv2.remap(fwd, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        fx, fy, bx, by = f_at_q[..., 0], f_at_q[..., 1], back[..., 0], back[..., 1]
        err = (fx + bx) ** 2 + (fy + by) ** 2  # per channel: a sum over the last axis is 10x slower
        bound = FB_ALPHA * (fx * fx + fy * fy + bx * bx + by * by) + FB_BETA
        valid &= err <= bound
    return Motion(back, valid, (time.perf_counter() - t0) * 1e3)


#: the longest stamp step a :class:`FlowChain` links across by default (a wider step breaks it)
MAX_GAP_S = 0.5


class FlowChain:
    """The motion from the previous frame to each new frame of one camera (see the module doc).

    ``update(image, stamp)`` returns a :class:`Motion` or None where the chain breaks. ``stamp``
    in seconds (the message stamp; the benchmark uses frame index / fps); None: no gap check."""

    def __init__(self, preset: str = DEFAULT_PRESET, fb_check: bool = True, max_gap_s: float = MAX_GAP_S,
                 gap_factor: float = 1.5):
        if max_gap_s <= 0 or gap_factor <= 1:
            raise ValueError("need max_gap_s > 0 and gap_factor > 1")
        self.preset, self.fb_check = preset, bool(fb_check)
        self.max_gap_s, self.gap_factor = float(max_gap_s), float(gap_factor)
        self._dis = _dis(preset)
        self._prev: Optional[np.ndarray] = None
        self._prev_stamp: Optional[float] = None
        self._steps: deque[float] = deque(maxlen=15)   # recent stamp steps: the camera's usual period
        self._pending_reason = "start"
        self.breaks: Counter[str] = Counter()
        self.links = 0
        self.total_ms = 0.0
        self.valid_sum = 0.0  # sum over links of the valid fraction

    def reset(self) -> None:
        """Forget the previous frame (a method reset, a new stream): the next frame starts a chain."""
        self._prev, self._prev_stamp = None, None
        self._steps.clear()
        self._pending_reason = "reset"

    def _gap(self, stamp: Optional[float]) -> Optional[str]:
        if stamp is None or self._prev_stamp is None:
            return None
        dt = float(stamp) - self._prev_stamp
        if dt <= 0:
            return "order"
        usual = statistics.median(self._steps) if self._steps else None
        self._steps.append(dt)
        if dt > self.max_gap_s or (usual is not None and dt > self.gap_factor * usual):
            self._steps.clear()   # a new rate may follow (e.g. the camera was reconfigured)
            self._steps.append(dt)
            return "gap"
        return None

    def update(self, image: Any, stamp: Optional[float] = None) -> Optional[Motion]:
        t0 = time.perf_counter()
        cur = to_gray(image)
        reason = self._pending_reason if self._prev is None else (
            "size" if self._prev.shape != cur.shape else self._gap(stamp))
        motion = None
        if reason is None:
            motion = estimate_motion(self._prev, cur, self._dis, self.fb_check)
            self.links += 1
            self.valid_sum += motion.valid_fraction()
        else:
            self.breaks[reason] += 1
        self._prev, self._prev_stamp = cur, (None if stamp is None else float(stamp))
        self._pending_reason = "start"
        ms = (time.perf_counter() - t0) * 1e3
        self.total_ms += ms
        if motion is not None:
            motion.ms = ms
        return motion

    def stats(self) -> dict[str, Any]:
        n = self.links + sum(self.breaks.values())
        return {"preset": self.preset, "fb_check": self.fb_check, "frames": n, "links": self.links,
                "breaks": dict(self.breaks), "mean_flow_ms": self.total_ms / n if n else float("nan"),
                "mean_valid_fraction": self.valid_sum / self.links if self.links else float("nan")}


# ------------------------------------------------------------------------------------ warping
def sample_grid(motion: Motion, size: tuple[int, int], device: Any = "cpu"):
    """The normalised sampling grid (1, H, W, 2) of ``torch.nn.functional.grid_sample`` and the
    validity (H, W) bool tensor, for maps of ``size``."""
    import torch

    m = motion.resized(size)
    h, w = m.shape
    gx, gy = _pixel_grid(h, w)
    grid = np.empty((1, h, w, 2), np.float32)  # positions in the previous frame, normalised to [-1, 1]
    grid[0, ..., 0] = (gx + m.flow[..., 0]) * (2.0 / max(w - 1, 1)) - 1.0
    grid[0, ..., 1] = (gy + m.flow[..., 1]) * (2.0 / max(h - 1, 1)) - 1.0
    return torch.from_numpy(grid).to(device), torch.from_numpy(m.valid).to(device)


def warp(prev: Any, motion: Motion):
    """Bilinear warp of a (C, H, W) or (N, C, H, W) tensor of the previous frame into the current
    one; returns (warped, valid (H, W) bool)."""
    import torch.nn.functional as F

    squeeze = prev.dim() == 3
    x = prev[None] if squeeze else prev
    grid, valid = sample_grid(motion, tuple(x.shape[-2:]), x.device)
    out = F.grid_sample(x.float(), grid.expand(x.shape[0], -1, -1, -1), mode="bilinear",
                        padding_mode="border", align_corners=True).to(prev.dtype)
    return (out[0] if squeeze else out), valid


def warp_nearest(labels: np.ndarray, motion: Motion) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour warp of a (H, W) class-id map of the previous frame; (warped, valid)."""
    labels = np.asarray(labels)
    m = motion.resized(labels.shape[:2])
    h, w = m.shape
    gx, gy = _pixel_grid(h, w)
    xi = np.clip(np.rint(gx + m.flow[..., 0]), 0, w - 1).astype(np.intp)
    yi = np.clip(np.rint(gy + m.flow[..., 1]), 0, h - 1).astype(np.intp)
    return labels[yi, xi], m.valid


class MotionLog:
    """The motion into each recent frame of one camera, by stamp: the flow for scoring label flicker
    where frames arrive as messages (the evaluator), not in one loop with their predictions.

    ``add(stamp_ns, image)`` feeds the camera's frames in stamp order (an older or repeated stamp is
    ignored) through a :class:`FlowChain`; ``link(stamp_ns)`` is ``(previous stamp, Motion)`` into
    that frame, or None (not seen, or the chain broke there). Frames wider than ``max_width`` are
    scaled down first (the flow of the benchmark runs at the model's input, 256 wide here);
    :func:`warp_nearest` scales the motion to whatever map it warps. Keeps the last ``keep`` links."""

    warp = staticmethod(warp_nearest)

    def __init__(self, preset: str = DEFAULT_PRESET, keep: int = 64, max_width: int = 256):
        if keep < 1 or max_width < 16:
            raise ValueError("MotionLog needs keep >= 1 and max_width >= 16")
        self.chain = FlowChain(preset)
        self.keep, self.max_width = int(keep), int(max_width)
        self._links: "OrderedDict[int, tuple[Optional[int], Optional[Motion]]]" = OrderedDict()
        self._last: Optional[int] = None
        self.ignored = 0

    def add(self, stamp_ns: int, image: np.ndarray) -> Optional[Motion]:
        stamp_ns = int(stamp_ns)
        if self._last is not None and stamp_ns <= self._last:
            self.ignored += 1
            return None
        image = np.asarray(image)
        if image.shape[1] > self.max_width:  # the chain turns it grey
            import cv2

            h = max(1, round(image.shape[0] * self.max_width / image.shape[1]))
            image = cv2.resize(image, (self.max_width, h), interpolation=cv2.INTER_AREA)
        motion = self.chain.update(image, stamp_ns / 1e9)
        self._links[stamp_ns] = (self._last, motion)
        while len(self._links) > self.keep:
            self._links.popitem(last=False)
        self._last = stamp_ns
        return motion

    def link(self, stamp_ns: int) -> Optional[tuple[int, Motion]]:
        prev, motion = self._links.get(int(stamp_ns), (None, None))
        return None if prev is None or motion is None else (prev, motion)


# ------------------------------------------------------------------------------------ output fusion
#: how much of the warped past a pixel takes: ``fixed`` the weight w everywhere (the outside
#: prototype's rule), ``adaptive`` w times the current frame's uncertainty at that pixel
FUSION_MODES = ("fixed", "adaptive")


def uncertainty(p: Any):
    """Per pixel ``(1 - max_c p) / (1 - 1/C)`` of probabilities (N, C, H, W), as (N, 1, H, W) in [0, 1]:
    0 where one class takes all the mass, 1 where all C are equal. Parameter-free: its only scale is
    its own maximum, so no constant is fitted to any stream."""
    c = p.shape[1]
    if c < 2:
        return p.new_zeros((p.shape[0], 1, *p.shape[2:]))
    return ((1.0 - p.amax(1, keepdim=True)) * (c / (c - 1.0))).clamp_(0.0, 1.0)


class TemporalFusion:
    """Per camera: class probabilities fused with the previous fused map warped to this frame.

    ``weight`` w of the past in [0, 1): ``p = (1 - a) softmax(z) + a warp(p_prev)`` where the flow is
    valid; ``softmax(z)`` where it is not and after a chain break. ``mode="fixed"``: ``a = w``;
    ``mode="adaptive"``: ``a = w * uncertainty(softmax(z))`` per pixel, so the past fills in only where
    the current frame is unsure (a fixed w smears confident thin structures along flow errors by
    day, docs/video.md). Returns log-probabilities (their softmax is ``p``, their argmax the fused
    labels), so the pipeline post-processes them as logits. ``weight == 0``: the logits are returned
    unchanged (bit-identical to no fusion)."""

    def __init__(self, weight: float, mode: str = "fixed"):
        if not 0.0 <= float(weight) < 1.0:
            raise ValueError(f"temporal fusion weight must be in [0, 1), got {weight}")
        if mode not in FUSION_MODES:
            raise ValueError(f"temporal fusion mode must be one of {', '.join(FUSION_MODES)}, got {mode!r}")
        self.weight, self.mode = float(weight), mode
        self._prev = None
        self.fused_frames = 0
        self.total_ms = 0.0
        self.frames = 0
        self.past_sum = 0.0  # sum over fused frames of the mean weight of the past (valid pixels or not)

    def reset(self) -> None:
        self._prev = None

    def __call__(self, logits: Any, motion: Optional[Motion]):
        if self.weight == 0.0:
            return logits
        t0 = time.perf_counter()
        squeeze = logits.dim() == 3
        z = logits[None] if squeeze else logits
        if z.dim() != 4 or z.shape[0] != 1:
            raise ValueError(f"temporal fusion needs one segmentation map (C, H, W), got {tuple(logits.shape)}")
        p = z.float().softmax(1)
        if motion is not None and self._prev is not None and self._prev.shape == p.shape:
            past, valid = warp(self._prev, motion)
            a = self.weight * valid.to(p.dtype)  # w = 0 where invalid
            if self.mode == "adaptive":
                a = a * uncertainty(p)
            p = p.lerp(past, a)  # one pass
            self.fused_frames += 1
            self.past_sum += float(a.mean())
        self._prev = p
        out = p.clamp_min(1e-12).log()
        self.frames += 1
        self.total_ms += (time.perf_counter() - t0) * 1e3
        return out[0] if squeeze else out

    def stats(self) -> dict[str, Any]:
        return {"weight": self.weight, "mode": self.mode, "frames": self.frames, "fused_frames": self.fused_frames,
                "mean_past_weight": self.past_sum / self.fused_frames if self.fused_frames else float("nan"),
                "mean_fusion_ms": self.total_ms / self.frames if self.frames else float("nan")}
