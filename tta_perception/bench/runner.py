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
              "blocks", "warmed_up", "fisher")


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
    """Per-domain accumulators and the per-point series of the plot."""

    def __init__(self, task: str, num_classes: int):
        from ..metrics import ConfusionMatrix

        self.task, self.nc = task, num_classes
        self.cm = ConfusionMatrix
        self.dom: dict[str, Any] = {}
        self.total = ConfusionMatrix(num_classes) if task == "seg" else [0, 0]
        self.x: list[int] = []
        self.y: list[float] = []
        self.d: list[str] = []
        self.w: list[dict] = []

    def update(self, logits: torch.Tensor, chunk) -> None:
        pred = logits.argmax(1).cpu().numpy()
        lab = chunk.label_array()
        if self.task == "cls":
            ok = pred == lab
            for dm, o in zip(chunk.domains, ok):
                acc = self.dom.setdefault(dm, [0, 0])
                acc[0] += int(o)
                acc[1] += 1
            self.total[0] += int(ok.sum())
            self.total[1] += len(ok)
            self.x.append(int(chunk.index[-1]))
            self.y.append(100.0 * (1.0 - float(ok.mean())))
            self.d.append(chunk.domains[-1])
            return
        from ..evaluation import frame_miou
        for i, (p, t) in enumerate(zip(pred, lab)):
            dm = chunk.domains[i]
            self.dom.setdefault(dm, self.cm(self.nc)).update(p, t)
            self.total.update(p, t)
            self.x.append(int(chunk.index[i]))
            self.y.append(100.0 * frame_miou(p, t, self.nc))
            self.d.append(dm)
            if chunk.weather is not None:
                self.w.append(chunk.weather[i])

    def domains(self) -> dict[str, float]:
        if self.task == "cls":
            return {k: 100.0 * (1 - c / n) for k, (c, n) in self.dom.items()}
        return {k: 100.0 * cm.miou() for k, cm in self.dom.items()}

    def overall(self) -> float:
        if self.task == "cls":
            c, n = self.total
            return 100.0 * (1 - c / n) if n else float("nan")
        return 100.0 * self.total.miou()


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
               bundle=None, fisher_batches=None) -> MethodRun:
    """Build variant ``name`` on a fresh copy of ``source_model`` and run it over ``stream``."""
    from tqdm.auto import tqdm

    seed_everything(opts.seed)
    scorer = _Scorer(stream.task, stream.num_classes)
    frames = 0
    busy = 0.0
    stream_info: dict[str, Any] = {}
    with PeakMemory(opts.device) as mem:
        t_setup = time.perf_counter()
        model = copy.deepcopy(source_model).to(opts.device)
        method = build_variant(name, model, bundle=bundle, fisher_batches=fisher_batches, safety=opts.safety)
        setup_s = time.perf_counter() - t_setup
        adapter = None
        if opts.streaming:
            from ..engine import StreamingAdapter
            needs = {"student": "model", "teacher": "teacher"}.get(opts.predict_mode)
            mode = opts.predict_mode if (method.ADAPTS and needs in method.inference_modules()) else "method"
            adapter = StreamingAdapter(method, window=opts.window, adapt_every=opts.adapt_every,
                                       background=opts.background, min_window=min(2, opts.window),
                                       predict_mode=mode, bn_stats=opts.bn_stats)
            if not method.ADAPTS:  # the source model: prediction only, no pointless steps in its time
                adapter.set_enabled(False)
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
    del method, model, adapter
    return MethodRun(name, stream.name, opts.seed, scorer.domains(), scorer.overall(), frames,
                     busy * 1e3 / max(frames, 1), setup_s, mem.peak_mib, mem.kind, scorer.x, scorer.y, scorer.d,
                     scorer.w, stats, stream_info)
