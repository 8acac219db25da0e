"""Run one method over one stream: predictions scored as they come, time per frame, peak memory.

Batch protocol: ``method.step(x)`` per chunk (predict + adapt; the prediction is the one of the
adaptation forward, as in the reference framework). Streaming protocol: one frame at a time through
the node's frame path (``runtime.frame_path.FramePath``: flow, ``engine.StreamingAdapter``, fusion;
synchronous by default so runs are deterministic; the prediction for a frame is made before
adapting on it, as in the background mode). This module keeps only what is the benchmark's: the
stream, the simulated clock of ``--realtime`` and the scoring.

Time per frame counts only the method's own work (``step`` / ``predict``, device-synchronised), not
data conversion or scoring. The source model's plain forward pass is timed on the same inputs in the
same process, and every method's time is reported as a multiple of it.

Video (streaming segmentation, ``docs/video.md``): the path follows the motion of every frame
(stamps = frame index / fps, so a stride > 1 or a reset breaks the chain). Every run scores **label
flicker** per domain beside the mIoU (``metrics.flicker``; the flow for the metric is not counted in
a method's time unless the method uses it: DPLOT ``temporal_pl``). With ``temporal_fusion`` > 0 the
same run also scores its outputs fused over time as the companion rows ``<method>+tf`` (fixed weight)
and/or ``<method>+tfa`` (adaptive, ``fusion_modes``): fusion only changes what is published, never
what the method adapts on, so all rows come from one run (exactly paired); a fused row's time adds
the flow and its own fusion.
"""
from __future__ import annotations

import copy
import math
import random
import statistics
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .common import PeakMemory, sync
from .streams import BenchStream
from .variants import VARIANTS, build_variant

KEEP_STATS = ("steps", "updates", "nan_skips", "resets", "collapse_resets", "method_resets", "filtered_steps",
              "blocks", "warmed_up", "fisher", "warmup", "warmup_steps", "contrastive", "d_margin", "ap")


@dataclass
class RunOptions:
    device: torch.device
    seed: int = 0
    streaming: bool = False
    window: int = 16
    adapt_every: int = 16
    background: bool = False
    predict_mode: str = "method"      # streaming: the method's own prediction, or the student/teacher alone
    bn_stats: str = "auto"            # streaming: BN of a frame: its own statistics or the running EMA
    safety: bool = False
    progress: bool = True
    realtime_hz: float | None = None  # streaming: a simulated camera at this rate (bench/realtime.py, clock.py)
    realtime_costs: dict[str, Any] | None = None   # ... and this method's predict_ms / step_ms
    domain_calibration: dict[str, Any] | None = None  # '+dm' variants: the shift detector's calibration
    temporal_fusion: float = 0.0      # streaming seg: also score the outputs fused over time ('<method>+tf')
    fusion_modes: tuple[str, ...] = ("fixed",)  # ... in these modes: '+tf' fixed, '+tfa' adaptive
    flow_preset: str = "fast"         # engine.temporal.PRESETS
    # streaming: checkpoints inside the cell (bench/checkpoints.py; a long drive survives interruptions)
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0         # frames of the stream between checkpoints; 0 = off
    resume: bool = False              # continue from the cell's checkpoint in checkpoint_dir, if any
    weights_id: str = ""              # the source weights (and bundle) a checkpoint must have been made with
    progress_lines: bool = False      # one log line per checkpoint interval / weather cycle (no bar: a log)
    stop_after_frames: int | None = None  # tests only: CellInterrupted at the first chunk boundary at/after
    # streaming seg: the label-free quality estimate of every published output, validated against the
    # truth (runtime/quality.py); the embedded model whose calibrations it uses ('': the user's weights,
    # uncalibrated), None: not scored
    quality_model: str | None = None
    guard_settings: Any = None        # '<method>+g': runtime.guard.GuardSettings (None: the node's defaults)
    quality_source_every: int = 0     # the node's quality_source_every: the estimated gain over the source model


@dataclass
class MethodRun:
    method: str
    stream: str
    seed: int
    domains: dict[str, float]           # metric per domain key (error % or mIoU %)
    overall: float                      # cls: error % over all samples; seg: mIoU % over the whole stream
    frames: int
    ms_per_frame: float                 # method work per frame (batch protocol: step / batch size)
    setup_s: float
    peak_mem_mib: float
    mem_kind: str
    series_x: list[int] = field(default_factory=list)
    series_y: list[float] = field(default_factory=list)
    series_domain: list[str] = field(default_factory=list)
    series_weather: list[dict] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    streaming: dict[str, Any] = field(default_factory=dict)
    series_detected: list[int] = field(default_factory=list)  # domain memory: the detector's id per frame
    domains_by_cycle: dict[str, float] = field(default_factory=dict)  # 'phase@cycle' -> mIoU (looping sequences)
    # batch protocol, methods with ``last_parts`` (DPLOT, RMT): each half of the prediction scored alone,
    # from the same forward passes: {part: {"domains": ..., "overall": ...}}
    parts: dict[str, Any] = field(default_factory=dict)
    # video (streaming seg): label flicker % per domain / over the stream, flow and fusion costs
    flicker: dict[str, float] = field(default_factory=dict)
    flicker_overall: float = float("nan")
    temporal: dict[str, Any] = field(default_factory=dict)
    companions: list["MethodRun"] = field(default_factory=list)  # '+tf': the same run's fused outputs
    # streaming seg: per frame, the quality estimate of the published output, its level (0 OK, 1 WARN,
    # 2 ERROR) and the true pixel accuracy (bench/quality.py validates them)
    series_quality: list[float] = field(default_factory=list)
    series_level: list[int] = field(default_factory=list)
    series_accuracy: list[float] = field(default_factory=list)
    series_kept: list[float] = field(default_factory=list)  # --quality-source-every: the outputs' recent 'kept' (NaN: unknown)
    miou_by_cycle: dict[int, float] = field(default_factory=dict)  # cycle -> mIoU of the whole cycle (looping)

    def summary(self) -> dict[str, Any]:
        """Everything but the per-point lists, plus the metric series (x, y) for later analysis."""
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("series_") and k != "companions"}
        d["series"] = {"x": self.series_x, "y": [round(v, 2) for v in self.series_y]}
        if self.series_detected:
            d["series"]["domain"], d["series"]["detected"] = self.series_domain, self.series_detected
        if self.series_quality:  # the estimate beside the truth, per frame (bench/quality.py)
            d["series"]["quality"] = [round(v, 4) for v in self.series_quality]
            d["series"]["level"] = self.series_level
            d["series"]["accuracy"] = [round(v, 4) for v in self.series_accuracy]
            if any(math.isfinite(v) for v in self.series_kept):
                d["series"]["kept"] = [round(v, 4) if math.isfinite(v) else None for v in self.series_kept]
        return d

    def to_dict(self) -> dict[str, Any]:
        """Every field, per-frame series and companions included, exactly (JSON: ``bench --resume``
        rebuilds a finished cell from it with :meth:`from_dict`)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "companions"}
        d["miou_by_cycle"] = {str(k): v for k, v in self.miou_by_cycle.items()}
        d["companions"] = [c.to_dict() for c in self.companions]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MethodRun":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"not a saved MethodRun: unknown fields {unknown}")
        kw = dict(d)
        kw["miou_by_cycle"] = {int(k): float(v) for k, v in kw.get("miou_by_cycle", {}).items()}
        kw["companions"] = [cls.from_dict(c) for c in kw.get("companions", [])]
        return cls(**kw)


def runs_of(runs: Sequence[MethodRun], method: str, stream: str) -> list[MethodRun]:
    """The runs of ``method`` on the stream named ``stream`` (one per seed), in run order."""
    return [r for r in runs if r.method == method and r.stream == stream]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


class _Scorer:
    """One output row's scores of a stream: per domain (``metrics.DomainScores``), the per-point series
    of the plot and, for video, label flicker along each frame's motion (``_FlickerScore``).

    A checkpoint keeps what :attr:`SERIES` and :attr:`STATEFUL` name (``state_dict``): a new per-frame
    score adds its list or its object (with ``state_dict`` / ``load_state_dict``) there."""

    SERIES = ("x", "y", "d", "w")                                   # per-point lists
    STATEFUL = ("scores", "cycles", "whole_cycles", "flicker", "quality")  # objects with a state (or None)

    def __init__(self, task: str, num_classes: int, cycle_frames: int | None = None, video: bool = False):
        from ..metrics import DomainScores

        self.task = task
        self.scores = DomainScores(num_classes, task)
        # a looping sequence (dynamic): the same phases per cycle, 'phase@1', 'phase@2', ...
        self.cycle_frames = cycle_frames if task == "seg" else None
        self.cycles = DomainScores(num_classes, task) if self.cycle_frames else None
        self.whole_cycles = DomainScores(num_classes, task) if self.cycle_frames else None  # key: the cycle
        self.flicker = _FlickerScore() if video else None
        self.quality = None  # metrics.quality.QualityScore of the row the quality estimate judges
        self.x: list[int] = []
        self.y: list[float] = []
        self.d: list[str] = []
        self.w: list[dict] = []

    def update(self, logits: torch.Tensor, chunk, motions: Sequence[Any] = (), qualities: Sequence[Any] = ()) -> None:
        """Score a chunk's outputs; ``motions``: each frame's motion from the previous one (video);
        ``qualities``: each output's quality estimate (``runtime.quality.Quality``; with :attr:`quality`)."""
        pred = logits.argmax(1).cpu().numpy()
        lab = chunk.label_array()
        if self.task == "cls":
            self.y.append(self.scores.add_samples(pred, lab, chunk.domains))
            self.x.append(int(chunk.index[-1]))
            self.d.append(chunk.domains[-1])
            return
        for i, (p, t) in enumerate(zip(pred, lab)):
            dm = chunk.domains[i]
            self.x.append(int(chunk.index[i]))
            frame = self.scores.add_frame(p, t, dm)
            self.y.append(100.0 * frame.miou())
            if self.cycles is not None:
                cycle = int(chunk.index[i]) // self.cycle_frames + 1
                self.cycles.add_matrix(frame, f"{dm}@{cycle}")
                self.whole_cycles.add_matrix(frame, str(cycle))
            self.d.append(dm)
            if chunk.weather is not None:
                self.w.append(chunk.weather[i])
            if self.quality is not None:
                self.quality.update(qualities[i], frame.accuracy())
        if self.flicker is not None:
            for i, p in enumerate(pred):
                self.flicker.update(p, lab[i], motions[i], chunk.domains[i])

    def domains(self) -> dict[str, float]:
        return self.scores.domains()

    def overall(self) -> float:
        return self.scores.overall()

    def fields(self) -> dict[str, Any]:
        """The scores as :class:`MethodRun` fields."""
        f = self.flicker.flicker if self.flicker is not None else None
        return dict(domains=self.domains(), overall=self.overall(), series_x=self.x, series_y=self.y,
                    series_domain=self.d, series_weather=self.w,
                    domains_by_cycle=self.cycles.domains() if self.cycles is not None else {},
                    miou_by_cycle=({int(c): v for c, v in self.whole_cycles.domains().items()}
                                   if self.whole_cycles is not None else {}),
                    flicker=f.domains() if f is not None else {},
                    flicker_overall=f.overall() if f is not None else float("nan"),
                    **(self.quality.fields() if self.quality is not None else {}))

    def state_dict(self) -> dict[str, Any]:
        """Everything scored so far, as lists / dicts / numbers (a cell's checkpoint)."""
        state: dict[str, Any] = {k: list(getattr(self, k)) for k in self.SERIES}
        for k in self.STATEFUL:
            obj = getattr(self, k)
            state[k] = obj.state_dict() if obj is not None else None
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.SERIES:
            setattr(self, k, list(state[k]))
        for k in self.STATEFUL:
            obj = getattr(self, k)
            if (obj is None) != (state.get(k) is None):
                raise ValueError(f"checkpoint scores {k!r} {'without' if obj is not None else 'with'} it")
            if obj is not None:
                obj.load_state_dict(state[k])


@torch.no_grad()
def source_forward_ms(model: torch.nn.Module, stream: BenchStream, opts: RunOptions, max_chunks: int = 4,
                      repeats: int = 3) -> float:
    """Median time per frame of the source model's plain forward pass (eval BN, no grad) on the
    stream's first inputs, at the protocol's batch size (1 frame when streaming)."""
    m = copy.deepcopy(model).to(opts.device).eval()
    xs = []
    for chunk in stream:
        x = chunk.tensor().to(opts.device)
        xs.extend([x[i:i + 1] for i in range(min(len(x), max_chunks))] if opts.streaming else [x])
        if len(xs) >= max_chunks:
            break
    xs = xs[:max_chunks]
    m(xs[0])  # warm-up (allocator, kernels)
    per_frame = []
    for _ in range(repeats):
        for x in xs:
            sync(opts.device)
            t0 = time.perf_counter()
            m(x)
            sync(opts.device)
            per_frame.append((time.perf_counter() - t0) * 1e3 / x.shape[0])
    del m
    return float(statistics.median(per_frame))


class _FlickerScore:
    """Label flicker of one prediction stream: the previous frame's prediction and labels, warped."""

    def __init__(self):
        from ..metrics import Flicker

        self.flicker = Flicker()
        self._prev: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, pred: np.ndarray, labels: np.ndarray, motion, domain: str) -> None:
        from ..engine.temporal import warp_nearest

        if motion is not None and self._prev is not None:
            self.flicker.add_along(pred, labels, *self._prev, motion, warp_nearest, domain)
        self._prev = (pred, labels)

    def state_dict(self) -> dict[str, Any]:
        """The counts only: after a resume the first frame has no motion, so the previous one is unused."""
        return self.flicker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flicker.load_state_dict(state)
        self._prev = None


def build_stream_adapter(method, opts: RunOptions, domain_memory: bool = False):
    """The streaming adapter as the node builds it (inline, so runs are deterministic unless
    ``opts.background``); the source model only predicts (no pointless steps); ``domain_memory``
    with the node's defaults (engine.domains)."""
    from ..runtime.adapter import build_adapter, resolve_predict_mode

    domains = None
    if domain_memory:
        from ..engine.domains import build_memory

        if opts.domain_calibration is None:
            raise ValueError("domain memory needs the model's calibration (tta-perception calibrate-domains)")
        domains = build_memory(opts.domain_calibration)
    return build_adapter(method, window=opts.window, adapt_every=opts.adapt_every, background=opts.background,
                         bn_stats=opts.bn_stats, domains=domains,
                         predict_mode=resolve_predict_mode(opts.predict_mode, method, strict=False))


def adapter_info(adapter, st: dict[str, Any]) -> dict[str, Any]:
    """What a run reports of its streaming adapter, from the adapter's final ``stats()`` ``st``."""
    return {**{k: st[k] for k in ("mean_predict_ms", "mean_adapt_ms", "adapt_steps", "adapt_requests", "coalesced",
                                  "errors", "last_error", "window", "adapt_every", "background")},
            "predict_mode": adapter.predict_mode}


def frame_stamps(stream: BenchStream, chunk) -> list[float | None]:
    """The benchmark's stamps: frame index / fps (None without a rate: no gap check), so a stride
    above the chain's gap breaks every link."""
    fps = float(stream.info.get("fps") or 0) or None
    return [None if fps is None else int(i) / fps for i in chunk.index]


def method_seconds(path) -> float:
    """A method's own work on the frame path: its predictions (inline steps included) and the flow
    when the method needs it (DPLOT ``temporal_pl``), not when only the flicker or the fusion does."""
    return path.seconds["predict"] + (path.seconds["flow"] if path.uses_motion else 0.0)


def run_method(name: str, source_model: torch.nn.Module, stream: BenchStream, opts: RunOptions, *,
               bundle=None, fisher_batches=None, rmt_warmup=None) -> MethodRun:
    """Build variant ``name`` on a fresh copy of ``source_model`` and run it over ``stream``."""
    from tqdm.auto import tqdm

    from ..runtime.frame_path import FramePath
    from .variants import FUSION_SUFFIXES

    seed_everything(opts.seed)
    video = opts.streaming and stream.task == "seg"
    fused = video and opts.temporal_fusion > 0
    modes = tuple(opts.fusion_modes) if fused else ()
    suffix = {mode: sfx for sfx, mode in FUSION_SUFFIXES.items()}
    cycle_frames = getattr(stream, "cycle_frames", None)
    rows = {"": _Scorer(stream.task, stream.num_classes, cycle_frames, video)}  # '+tf', '+tfa': fused outputs
    for mode in modes:
        rows[suffix[mode]] = _Scorer(stream.task, stream.num_classes, cycle_frames, video)
    detected: list[int] = []
    part_scores: dict[str, _Scorer] = {}
    frames = 0
    busy = 0.0
    stream_info: dict[str, Any] = {}
    with PeakMemory(opts.device) as mem:
        t_setup = time.perf_counter()
        model = copy.deepcopy(source_model).to(opts.device)
        method = build_variant(name, model, bundle=bundle, fisher_batches=fisher_batches, rmt_warmup=rmt_warmup,
                               safety=opts.safety)
        setup_s = time.perf_counter() - t_setup
        adapter = clock = path = None
        if opts.streaming:
            adapter = build_stream_adapter(method, opts, VARIANTS[name].domain_memory)
            if opts.realtime_hz:
                clock = _realtime_clock(adapter, opts)
            # the node's frame path; the flow on every frame of a video, for the flicker
            quality, guard, reference = _quality_and_guard(name, adapter, stream, opts, rows,
                                                           suffix[modes[0]] if modes else "")
            path = FramePath(adapter, fusion=opts.temporal_fusion if fused else 0.0, flow=video,
                             preset=opts.flow_preset, sync=True, fusion_mode=modes[0] if modes else "fixed",
                             score_modes=modes, quality=quality, guard=guard, reference=reference)
        elif VARIANTS[name].domain_memory:
            raise ValueError(f"{name}: domain memory is a streaming protocol (bench --stream)")
        elif VARIANTS[name].guard:
            raise ValueError(f"{name}: the collapse guard watches a stream (bench --stream)")
        cell, lines, resumed = _cell_checkpoints(name, stream, opts, adapter, path, clock, rows, detected)
        frames, done_chunks = resumed.get("frames", 0), resumed.get("chunks", 0)
        setup_s = resumed.get("setup_s", setup_s)
        t_cell = time.perf_counter() - resumed.get("wall_s", 0.0)
        bar = tqdm(total=stream.n_samples, initial=frames, desc=f"{name} on {stream.name}", unit=stream.x_label,
                   disable=not opts.progress, leave=False)
        try:
            for k, chunk in enumerate(stream):
                if k < done_chunks:
                    continue  # scored before the checkpoint this cell resumed from
                x = chunk.tensor().to(opts.device)
                if chunk.reset and k > 0:
                    (adapter or method).reset()
                    for part in (clock, path):
                        if part is not None:
                            part.reset()
                if path is not None:
                    done = []
                    for i, stamp in enumerate(frame_stamps(stream, chunk) if video else [None] * len(x)):
                        if clock is not None:
                            clock.arrive()
                        done += path.run(x[i:i + 1], stamps=[stamp])
                        if adapter.domains is not None:
                            detected.append(adapter.domains.last.domain if adapter.domains.last else -1)
                    motions = [r.motion for r in done]
                    for key, scorer in rows.items():
                        mode = FUSION_SUFFIXES.get(key)
                        scorer.update(torch.stack([r.fused[mode] if mode else r.logits for r in done]), chunk,
                                      motions, [r.quality for r in done])
                else:
                    sync(opts.device)
                    t0 = time.perf_counter()
                    logits = method.step(x)
                    sync(opts.device)
                    busy += time.perf_counter() - t0
                    for part, out in (method.last_parts or {}).items():  # outside the timed work
                        part_scores.setdefault(part, _Scorer(stream.task, stream.num_classes)).update(out, chunk)
                    rows[""].update(logits, chunk)
                frames += x.shape[0]
                bar.update(x.shape[0])
                if cell is not None:
                    cell.after_chunk(frames, k + 1, setup_s=setup_s, wall_s=time.perf_counter() - t_cell,
                                     peak_mem_mib=max(mem.so_far_mib(), resumed.get("peak_mem_mib", 0.0)))
                if lines is not None:
                    lines.update(frames)
                if opts.stop_after_frames is not None and frames >= opts.stop_after_frames:
                    from .checkpoints import CellInterrupted

                    raise CellInterrupted(f"{name} on {stream.name}: stopped after {frames} frames (test hook)")
        finally:
            bar.close()
            if adapter is not None:
                adapter.wait_idle()
                st = adapter.stats()
                adapter.close()
                stream_info = adapter_info(adapter, st)
                if adapter.domains is not None:
                    stream_info["domain_memory"] = {k: st[k] for k in ("domain_switches", "domains_known",
                                                                       "domains_stored", "domain_bank_mb")}
                if clock is not None:
                    stream_info["realtime"] = clock.summary()
                if path is not None and path.guard is not None:
                    stream_info["guard"] = path.guard.stats()
                    stream_info["guard_ms"] = path.seconds["guard"] * 1e3 / max(frames, 1)
                if path is not None and path.quality is not None:
                    stream_info["quality_ms"] = path.seconds["quality"] * 1e3 / max(frames, 1)
                    # its cost against the prediction's (the node's forward pass and inline steps)
                    stream_info["quality_cost"] = path.seconds["quality"] / max(path.seconds["predict"], 1e-9)
    stats = {k: v for k, v in method.stats.items() if k in KEEP_STATS or k.startswith("temporal_")}
    parts = {p: {"domains": sc.domains(), "overall": sc.overall()} for p, sc in part_scores.items()}
    n = max(frames, 1)
    temporal: dict[str, Any] = {}
    temporal_fused: dict[str, dict[str, Any]] = {}
    fused_busy: dict[str, float] = {}
    if path is not None:
        sec = path.seconds
        busy = method_seconds(path)
        if video:
            cam = path.camera()
            temporal = {**cam.chain.stats(), "flow_ms": sec["flow"] * 1e3 / n, "flow_counted": path.uses_motion}
            for mode, fusion in cam.fusions.items():  # a fused output needs the flow and its own fusion
                fused_busy[mode] = sec["predict"] + sec["flow"] + fusion.total_ms / 1e3
                temporal_fused[mode] = {**temporal, **fusion.stats(), "fusion_ms": fusion.total_ms / n}
    del method, model, adapter, clock, path

    peak = max(mem.peak_mib, resumed.get("peak_mem_mib", 0.0))  # a resumed cell: over every session

    def method_run(label: str, scorer: _Scorer, seconds: float, **extra_fields) -> MethodRun:
        return MethodRun(label, stream.name, opts.seed, frames=frames, ms_per_frame=seconds * 1e3 / n,
                         setup_s=setup_s, peak_mem_mib=peak, mem_kind=mem.kind, stats=stats,
                         **scorer.fields(), **extra_fields)

    run = method_run(name, rows[""], busy, streaming=stream_info, series_detected=detected, parts=parts,
                     temporal=temporal)
    for mode in modes:
        run.companions.append(method_run(f"{name}{suffix[mode]}", rows[suffix[mode]], fused_busy[mode],
                                         streaming=dict(stream_info), temporal=temporal_fused[mode]))
    return run


def _quality_and_guard(name: str, adapter, stream: BenchStream, opts: RunOptions, rows: dict[str, _Scorer],
                       published: str):
    """The node's quality estimator, its source reference (``quality_source_every``) and
    (``'<method>+g'``) collapse guard for a streaming run, built as ``runtime.pipeline`` builds them
    (one frozen source model shared); the quality is scored on the row of the published output."""
    seg = stream.task == "seg"
    quality = guard = reference = None
    if seg and opts.quality_model is not None:
        from ..metrics.quality import QualityScore
        from ..runtime.quality import QualityEstimator, load_calibration

        # the variant's method's calibration on that model ('': none, the uncalibrated mean confidence)
        quality = QualityEstimator(load_calibration(opts.quality_model, VARIANTS[name].method)[0])
        rows[published].quality = QualityScore()
        from ..runtime.reference import build_reference

        reference = build_reference(adapter, opts.quality_model, opts.quality_source_every)
    if VARIANTS[name].guard:
        if not seg:
            raise ValueError(f"{name}: the collapse guard watches streaming segmentation (--task seg --stream)")
        from ..runtime.guard import build_guard

        guard = build_guard(adapter, opts.guard_settings, opts.quality_model or "", VARIANTS[name].method,
                            source=reference.model if reference is not None else None)
    return quality, guard, reference


def _cell_checkpoints(name: str, stream: BenchStream, opts: RunOptions, adapter, path, clock, rows, detected):
    """A streaming cell's checkpoints (none with ``--realtime``: its simulated clock is not saved),
    restored when resuming, and its progress lines: ``(checkpoints or None, lines or None, resumed)``
    with ``resumed`` the work already done (``frames``, ``chunks``, ...; {} when starting)."""
    from . import checkpoints

    cell, resumed = None, {}
    if path is not None and clock is None and opts.checkpoint_dir is not None and opts.checkpoint_every > 0:
        cell = checkpoints.CellCheckpoints(
            checkpoints.checkpoint_path(opts.checkpoint_dir, stream.name, name, opts.seed),
            checkpoints.fingerprint(name, stream, opts), opts.checkpoint_every, stream.n_samples, adapter=adapter,
            frame_path=path, scorers=rows, detected=detected, device=opts.device)
        if opts.resume:
            resumed = cell.resume()
    lines = None
    stride = int(stream.info.get("stride") or 1)
    per_cycle = stream.cycle_frames / stride if getattr(stream, "cycle_frames", None) else None
    every = opts.checkpoint_every if opts.checkpoint_every > 0 else int(round(per_cycle or 0))
    if opts.progress_lines and every > 0:
        lines = checkpoints.ProgressLines(f"{name} seed {opts.seed} on {stream.name}", stream.n_samples, every,
                                          per_cycle, resumed.get("frames", 0), resumed.get("wall_s", 0.0))
        if resumed:
            lines.log(f"{lines.label}: resumed at {resumed['frames']:,}/{stream.n_samples:,} frames "
                      f"from {cell.file}")
    return cell, lines, resumed


def _realtime_clock(adapter, opts: RunOptions):
    """``bench --realtime``: the adapter's requests go to a simulated clock with the method's costs."""
    from .clock import RealtimeClock

    if opts.background:
        raise ValueError("--realtime simulates the camera clock with inline adaptation; drop --background")
    costs = opts.realtime_costs or {}
    if "predict_ms" not in costs:
        raise ValueError("--realtime needs the method's measured costs (predict_ms, step_ms)")
    clock = RealtimeClock(opts.realtime_hz, costs["predict_ms"], costs.get("step_ms"), adapter.window,
                          start_step=lambda: adapter.adapt_now(publish=False), publish=adapter.publish)
    adapter.on_request = clock.request
    return clock
