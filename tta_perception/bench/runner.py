"""Run one method over one stream: predictions scored as they come, time per frame, peak memory.

Batch protocol: ``method.step(x)`` per chunk (predict + adapt; the prediction is the one of the
adaptation forward, as in the reference framework). Streaming protocol: one frame at a time through
``engine.StreamingAdapter`` (synchronous by default so runs are deterministic; the prediction for a
frame is made before adapting on it, as in the background mode).

Time per frame counts only the method's own work (``step`` / ``predict``, device-synchronised), not
data conversion or scoring. The source model's plain forward pass is timed on the same inputs in the
same process, and every method's time is reported as a multiple of it.
"""
from __future__ import annotations

import copy
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .common import PeakMemory, sync
from .streams import BenchStream
from .variants import build_variant

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
    # batch protocol, methods with ``last_parts`` (DPLOT, RMT): each half of the prediction scored alone,
    # from the same forward passes: {part: {"domains": ..., "overall": ...}}
    parts: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything but the per-point lists, plus the metric series (x, y) for later analysis."""
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("series_")}
        d["series"] = {"x": self.series_x, "y": [round(v, 2) for v in self.series_y]}
        return d


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


class _Scorer:
    """The stream's scores per domain (``metrics.DomainScores``) and the per-point series of the plot."""

    def __init__(self, task: str, num_classes: int):
        from ..metrics import DomainScores

        self.task = task
        self.scores = DomainScores(num_classes, task)
        self.x: list[int] = []
        self.y: list[float] = []
        self.d: list[str] = []
        self.w: list[dict] = []

    def update(self, logits: torch.Tensor, chunk) -> None:
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
            self.y.append(100.0 * self.scores.add_frame(p, t, dm).miou())
            self.d.append(dm)
            if chunk.weather is not None:
                self.w.append(chunk.weather[i])

    def domains(self) -> dict[str, float]:
        return self.scores.domains()

    def overall(self) -> float:
        return self.scores.overall()


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


def run_method(name: str, source_model: torch.nn.Module, stream: BenchStream, opts: RunOptions, *,
               bundle=None, fisher_batches=None, rmt_warmup=None) -> MethodRun:
    """Build variant ``name`` on a fresh copy of ``source_model`` and run it over ``stream``."""
    from tqdm.auto import tqdm

    seed_everything(opts.seed)
    scorer = _Scorer(stream.task, stream.num_classes)
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
        adapter = None
        if opts.streaming:  # as the node builds it; the source model only predicts (no pointless steps)
            from ..runtime.adapter import build_adapter, resolve_predict_mode

            adapter = build_adapter(method, window=opts.window, adapt_every=opts.adapt_every,
                                    background=opts.background, bn_stats=opts.bn_stats,
                                    predict_mode=resolve_predict_mode(opts.predict_mode, method, strict=False))
        bar = tqdm(total=stream.n_samples, desc=f"{name} on {stream.name}", unit=stream.x_label,
                   disable=not opts.progress, leave=False)
        try:
            for k, chunk in enumerate(stream):
                x = chunk.tensor().to(opts.device)
                if chunk.reset and k > 0:
                    (adapter or method).reset()
                if adapter is not None:
                    outs = []
                    for i in range(x.shape[0]):
                        sync(opts.device)
                        t0 = time.perf_counter()
                        out = adapter.predict(x[i:i + 1])
                        sync(opts.device)
                        busy += time.perf_counter() - t0
                        outs.append(out)
                    logits = torch.cat(outs)
                else:
                    sync(opts.device)
                    t0 = time.perf_counter()
                    logits = method.step(x)
                    sync(opts.device)
                    busy += time.perf_counter() - t0
                    for part, out in (method.last_parts or {}).items():  # outside the timed work
                        part_scores.setdefault(part, _Scorer(stream.task, stream.num_classes)).update(out, chunk)
                frames += x.shape[0]
                scorer.update(logits, chunk)
                bar.update(x.shape[0])
        finally:
            bar.close()
            if adapter is not None:
                adapter.wait_idle()
                st = adapter.stats()
                adapter.close()
                stream_info = {k: st[k] for k in ("mean_predict_ms", "mean_adapt_ms", "adapt_steps", "adapt_requests",
                                                   "coalesced", "errors", "last_error", "window", "adapt_every",
                                                   "background")}
                stream_info["predict_mode"] = adapter.predict_mode
    stats = {k: v for k, v in method.stats.items() if k in KEEP_STATS}
    parts = {p: {"domains": sc.domains(), "overall": sc.overall()} for p, sc in part_scores.items()}
    del method, model, adapter
    return MethodRun(name, stream.name, opts.seed, scorer.domains(), scorer.overall(), frames,
                     busy * 1e3 / max(frames, 1), setup_s, mem.peak_mib, mem.kind, scorer.x, scorer.y, scorer.d,
                     scorer.w, stats, stream_info, parts)
