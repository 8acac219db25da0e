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
- **fuse**: one ``engine.temporal.TemporalFusion`` per camera while ``fusion`` > 0 (live).
- **record**: a :class:`FrameRecord` per frame. A new per-frame feature (a quality estimate, a
  collapse guard) is computed here as a field of it, so the node, the replay and the benchmark see
  the same value.

The time of each stage is summed in :attr:`FramePath.seconds` (device-synchronised with
``sync=True``: the benchmark's time per frame).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .devices import sync as device_sync

STAGES = ("flow", "predict", "fuse")


@dataclass
class FrameRecord:
    """What the path made of one frame."""

    camera: str
    logits: Any          # (C, ...) the method's prediction (what adaptation sees)
    output: Any          # what is published: the fused log-probabilities, else the logits themselves
    motion: Any = None   # engine.temporal.Motion from the camera's previous frame; None: a break, or not followed


class CameraVideo:
    """One camera's video state: its flow chain and, while fusion is on, its fusion."""

    __slots__ = ("chain", "fusion")

    def __init__(self, chain: Any):
        self.chain, self.fusion = chain, None


class FramePath:
    """The per-frame sequence over one streaming adapter, with the per-camera video state.

    ``flow``: None follows the motion only when the fusion or the method needs it (the node); True on
    every frame (a caller that scores it: the benchmark's flicker); False never (classification).
    ``preset``: the DIS preset of the chains (None: ``engine.temporal.DEFAULT_PRESET``)."""

    def __init__(self, adapter: Any, fusion: float = 0.0, flow: Optional[bool] = None,
                 preset: Optional[str] = None, sync: bool = False):
        self.adapter = adapter
        self.uses_motion = bool(getattr(adapter.method, "uses_motion", False))
        self.flow, self.preset, self.sync = flow, preset, bool(sync)
        self.cameras: dict[str, CameraVideo] = {}
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.fusion = 0.0
        self.set_fusion(fusion)

    def set_fusion(self, weight: float) -> None:
        """Weight of the past in the published output (0 = off); each camera's next frame starts a new
        fusion with it."""
        self.fusion = float(weight)
        for cam in self.cameras.values():
            cam.fusion = None

    def follows_motion(self) -> bool:
        return bool(self.fusion or self.uses_motion) if self.flow is None else self.flow

    def camera(self, name: str = "") -> CameraVideo:
        """``name``'s video state, made on its first frame."""
        cam = self.cameras.get(name)
        if cam is None:
            from ..engine.temporal import FlowChain

            cam = self.cameras[name] = CameraVideo(FlowChain() if self.preset is None else FlowChain(self.preset))
        if cam.fusion is None and self.fusion:
            from ..engine.temporal import TemporalFusion

            cam.fusion = TemporalFusion(self.fusion)
        return cam

    def reset(self) -> None:
        """Break every camera's chain (a method reset, a new stream): no past reaches the next frames.
        The chains' counts go on."""
        for cam in self.cameras.values():
            cam.chain.reset()
            if cam.fusion is not None:
                cam.fusion.reset()

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
            if self.fusion:
                t0 = time.perf_counter()
                outputs = [self.camera(c).fusion(logits[i], motions[i]) for i, c in enumerate(cameras)]
                self._sync()
                t["fuse"] += time.perf_counter() - t0
        return [FrameRecord(c, logits[i], outputs[i], motions[i]) for i, c in enumerate(cameras)]
