"""The one path of a frame through the adapted model: (flow) -> predict -> (fuse) -> record.

Every caller runs its frames through :class:`FramePath`, so they cannot drift apart: the node and
``replay`` (through :class:`.pipeline.Pipeline`, which decodes before and post-processes after),
``bench --stream`` (one frame at a time, its real-time clock and several cameras included) and any
later replay of many streams. What a caller keeps is only its own: the pipeline's decoding and
outputs; the benchmark's stream source, clock and scoring.

- **flow**: one ``engine.temporal.FlowChain`` per camera, the motion from that camera's previous
  frame; followed when something needs it (the output fusion, a method with ``uses_motion``, or a
  caller's own per-frame score: the benchmark's label flicker); the stamps break it (docs/video.md).
- **predict**: ``StreamingAdapter.predict_batch`` (the frames join the adaptation window). The motion
  reaches a method with ``uses_motion`` only while one camera has been seen: several cameras
  interleave in the window, where a frame's predecessor is then another camera's.
- **fuse**: one ``engine.temporal.TemporalFusion`` per camera while ``fusion`` > 0 (live), in
  ``fusion_mode`` (``fixed`` or ``adaptive``); ``score_modes``: other modes of the same weight fused
  beside it from the same flow, into :attr:`FrameRecord.fused` only (never published: the benchmark
  scores several fusions of one run, exactly paired).
- **quality** (``quality``: a ``runtime.quality.QualityEstimator``): the label-free estimate of
  each published output's pixel accuracy and its level, in :attr:`FrameRecord.quality`; with a
  ``reference`` (``runtime.reference.SourceReference``), on the frames it judges, also the source
  model's estimate of its own output there (the estimated gain over not adapting, in the level) and
  the share of its classes the camera's outputs keep (in the level only with a ``min_kept``).
- **guard** (``guard``: a ``runtime.guard.CollapseGuard``): blind or non-finite frames never join
  the adaptation window; after the prediction the guard checks the method's output and, when the
  adaptation collapses, restores a healthy state (:attr:`FrameRecord.recovery`). A check on a frame
  the reference judged reuses the source model's output.
- **record**: a :class:`FrameRecord` per frame. A new per-frame feature is computed here as a field
  of it, so the node, the replay, the benchmark and the fleet see the same value.

The time of each stage is summed in :attr:`FramePath.seconds` (device-synchronised with
``sync=True``: the benchmark's time per frame).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from .devices import sync as device_sync
from .quality import batch_signals

STAGES = ("flow", "predict", "fuse", "quality", "guard")


@dataclass
class FrameRecord:
    """What the path made of one frame."""

    camera: str
    logits: Any          # (C, ...) the method's prediction (what adaptation sees)
    output: Any          # what is published: the fused log-probabilities, else the logits themselves
    motion: Any = None   # engine.temporal.Motion from the camera's previous frame; None: a break, or not followed
    fused: dict = field(default_factory=dict)  # fusion mode -> its log-probabilities (the published one included)
    quality: Any = None  # runtime.quality.Quality of ``output``; None without an estimator
    recovery: Any = None  # runtime.guard.Recovery when the guard restored a state after this frame


class CameraVideo:
    """One camera's video state: its flow chain and, while fusion is on, its fusions by mode (the
    published one is :attr:`fusion`)."""

    __slots__ = ("chain", "fusions", "mode")

    def __init__(self, chain: Any):
        self.chain, self.fusions, self.mode = chain, {}, ""

    @property
    def fusion(self) -> Any:
        """The fusion of the published output (None while off)."""
        return self.fusions.get(self.mode)


class FramePath:
    """The per-frame sequence over one streaming adapter, with the per-camera video state.

    ``flow``: None follows the motion only when the fusion or the method needs it (the node); True on
    every frame (a caller that scores it: the benchmark's flicker); False never (classification).
    ``preset``: the DIS preset of the chains (None: ``engine.temporal.DEFAULT_PRESET``).
    ``score_modes``: fusion modes also computed for :attr:`FrameRecord.fused` (the benchmark's rows)."""

    def __init__(self, adapter: Any, fusion: float = 0.0, flow: Optional[bool] = None,
                 preset: Optional[str] = None, sync: bool = False, fusion_mode: str = "fixed",
                 score_modes: Sequence[str] = (), quality: Any = None, guard: Any = None,
                 reference: Any = None):
        self.adapter = adapter
        self.quality, self.guard, self.reference = quality, guard, reference
        self.uses_motion = bool(getattr(adapter.method, "uses_motion", False))
        self.flow, self.preset, self.sync = flow, preset, bool(sync)
        self.cameras: dict[str, CameraVideo] = {}
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.fusion, self.fusion_mode = 0.0, "fixed"
        self.modes: tuple[str, ...] = ()
        self.score_modes = tuple(score_modes)
        self.set_fusion(fusion, fusion_mode)

    def set_fusion(self, weight: float, mode: Optional[str] = None) -> None:
        """Weight of the past in the published output (0 = off) and its mode (None: unchanged); each
        camera's next frame starts new fusions with them."""
        from ..engine.temporal import FUSION_MODES

        mode = self.fusion_mode if mode is None else mode
        for m in (mode, *self.score_modes):
            if m not in FUSION_MODES:
                raise ValueError(f"temporal fusion mode must be one of {', '.join(FUSION_MODES)}, got {m!r}")
        self.fusion, self.fusion_mode = float(weight), mode
        self.modes = tuple(dict.fromkeys((mode, *self.score_modes)))  # the published mode first
        for cam in self.cameras.values():
            cam.fusions, cam.mode = {}, mode

    def follows_motion(self) -> bool:
        return bool(self.fusion or self.uses_motion) if self.flow is None else self.flow

    def camera(self, name: str = "") -> CameraVideo:
        """``name``'s video state, made on its first frame."""
        cam = self.cameras.get(name)
        if cam is None:
            from ..engine.temporal import FlowChain

            cam = self.cameras[name] = CameraVideo(FlowChain() if self.preset is None else FlowChain(self.preset))
        if not cam.fusions and self.fusion:
            from ..engine.temporal import TemporalFusion

            cam.fusions = {m: TemporalFusion(self.fusion, m) for m in self.modes}
            cam.mode = self.fusion_mode
        return cam

    def reset(self) -> None:
        """Break every camera's chain (a method reset, a new stream): no past reaches the next frames.
        The chains' counts go on."""
        for cam in self.cameras.values():
            cam.chain.reset()
            for fusion in cam.fusions.values():
                fusion.reset()
        if self.reference is not None:
            self.reference.forget()

    def _sync(self) -> None:
        if self.sync:
            device_sync(self.adapter.method.device)

    def run(self, x: Any, cameras: Optional[Sequence[str]] = None,
            stamps: Optional[Sequence[Optional[float]]] = None,
            adapt: Optional[Sequence[bool]] = None) -> list[FrameRecord]:
        """Frames ``x`` (N, 3, H, W) in [0, 1] at the model's input, the newest of N cameras, in one
        forward pass. ``cameras[i]`` / ``stamps[i]`` (seconds; None: no gap check): frame i's chain
        and its breaks; ``adapt[i]``: whether frame i joins the adaptation window (default: all)."""
        import torch

        n = int(x.shape[0])
        cameras = list(cameras) if cameras is not None else [""] * n
        stamps = list(stamps) if stamps is not None else [None] * n
        t = self.seconds
        motions: list[Any] = [None] * n
        if self.guard is not None:
            t0 = time.perf_counter()
            flags = [True] * n if adapt is None else [bool(a) for a in adapt]
            adapt = [a and self.guard.gate(x[i]) for i, a in enumerate(flags)]
            t["guard"] += time.perf_counter() - t0
        if self.follows_motion():
            t0 = time.perf_counter()
            motions = [self.camera(c).chain.update(x[i], s) for i, (c, s) in enumerate(zip(cameras, stamps))]
            t["flow"] += time.perf_counter() - t0
        handed = motions if self.uses_motion and len(self.cameras) == 1 else None
        with torch.no_grad():
            self._sync()
            t0 = time.perf_counter()
            logits = self.adapter.predict_batch(x, adapt, motions=handed)
            self._sync()
            t["predict"] += time.perf_counter() - t0
            outputs = list(logits)
            fused: list[dict] = [{} for _ in range(n)]
            if self.fusion:
                t0 = time.perf_counter()
                for i, c in enumerate(cameras):
                    cam = self.camera(c)
                    fused[i] = {m: f(logits[i], motions[i]) for m, f in cam.fusions.items()}
                    outputs[i] = fused[i][cam.mode]
                self._sync()
                t["fuse"] += time.perf_counter() - t0
            qualities: list[Any] = [None] * n
            sources: list[Any] = [None] * n  # the source model's logits on the frames the reference judges
            if self.quality is not None:
                t0 = time.perf_counter()
                qualities = self.quality.batch(torch.stack(outputs), x)
                if self.reference is not None:
                    judged = [i for i, due in enumerate(self.reference.due(cameras)) if due]
                    if judged:
                        src = self.reference.logits(x[judged])
                        for k, (i, s) in enumerate(zip(judged, batch_signals(src, x[judged], self.quality.step))):
                            sources[i] = src[k]
                            est = self.reference.estimate(s)
                            kept = self.reference.kept(cameras[i], outputs[i], src[k], s, est)
                            qualities[i] = self.quality.with_source(qualities[i], est, kept)
                self._sync()
                t["quality"] += time.perf_counter() - t0
            recoveries: list[Any] = [None] * n
            if self.guard is not None:
                t0 = time.perf_counter()
                recoveries = [self.guard.observe(logits[i], x[i], c, sources[i]) for i, c in enumerate(cameras)]
                if any(r is not None for r in recoveries):
                    for cam in self.cameras.values():  # no past of the collapsed state in the next outputs
                        for fusion in cam.fusions.values():
                            fusion.reset()
                    if self.reference is not None:
                        self.reference.forget()
                self._sync()
                t["guard"] += time.perf_counter() - t0
        return [FrameRecord(c, logits[i], outputs[i], motions[i], fused[i], qualities[i], recoveries[i])
                for i, c in enumerate(cameras)]
