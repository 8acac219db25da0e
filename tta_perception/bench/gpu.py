"""Speed and memory of every adaptation method on the two deployment workloads, the way the node runs
them (``engine.StreamingAdapter``).

``python -m tta_perception.bench.gpu [--out DIR]`` on a CUDA machine (under 5 minutes): methods ×
- ``cls``: ImageNet ResNet-50 at 224×224, an adaptation step on a batch of 64 (the paper's ImageNet-C
  setting), predictions one image at a time,
- ``seg``: DeepLabV3-MobileNetV3-Large, 14 classes (CarlaTTA), 512×1024 frames, a step on one frame
× precision ``fp32``, ``bf16`` (bfloat16 autocast for the step and the prediction) and ``bf16+cl``
(the same in channels-last memory format, which lets cuDNN pick NHWC tensor-core kernels).

Per combination: ms per prediction (the streaming adapter's ``predict``, adaptation off), ms per
adaptation step (``method.step`` on the step batch), adaptation steps per second while frames arrive
at 30 Hz (the background worker on its own CUDA stream, a step requested on every frame: requests
coalesce), the prediction latency meanwhile, and peak GPU memory; JSON, Markdown, CSV and a plot.

Weights are random (the machine may be offline): speed does not depend on their values, except that
CoTTA's augmentation branch, which runs only when the anchor model is unsure, runs on every step
here, so its figures are an upper bound. ``--quick`` runs tiny sizes on the CPU for tests.
"""
from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .output import write_report

WORKLOADS = {
    # name: (model, num_classes, step batch, (H, W)), quick variant
    "cls": {"arch": "resnet50", "num_classes": 1000, "batch": 64, "size": (224, 224),
            "quick": {"batch": 2, "size": (32, 32)}},
    "seg": {"arch": "deeplabv3_mobilenet_v3_large", "num_classes": 14, "batch": 1, "size": (512, 1024),
            "quick": {"batch": 1, "size": (32, 64)}},
    # the ImageNet-pretrained EfficientNet-Lite0 segmentation model, the node's window of 4 frames
    "lite0_seg": {"arch": "lite0_seg", "num_classes": 12, "batch": 4, "size": (512, 1024),
                  "quick": {"batch": 2, "size": (32, 64)}},
}
PRECISIONS = ("fp32", "bf16", "bf16+cl")
CAMERA_HZ = 30.0


@dataclass
class Result:
    workload: str
    method: str
    precision: str
    arch: str
    batch: int
    size: tuple
    status: str = "ok"          # ok | error | skipped
    ms_per_step: float = float("nan")   # median
    ms_p90: float = float("nan")
    frames_per_s: float = float("nan")  # step batch / step time
    ms_per_prediction: float = float("nan")
    steps_per_s_at_30hz: float = float("nan")
    prediction_p50_ms_at_30hz: float = float("nan")
    peak_mem_gib: float = float("nan")
    # seg: the per-output quality estimate (runtime.quality, every signal) on one prediction
    ms_quality: float = float("nan")
    steps: int = 0
    error: str = ""
    notes: list = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def method_options(name: str, model) -> dict:
    """Per-method options for a standalone speed run: paper protocol (no collapse reset) and, for
    DPLOT, a stand-in for phase A's selection (the first quarter of the candidate blocks; the early
    blocks are the ones selected in practice, and the cost barely depends on which)."""
    opts = {"collapse_reset": False}
    if name == "dplot":
        blocks = tuple(model.candidate_blocks)
        opts["blocks"] = blocks[: max(1, len(blocks) // 4)]
    return opts


def _median_ms(fn, n: int, device: torch.device) -> tuple[float, float]:
    times = []
    for _ in range(n):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]


def run_one(workload: str, method: str, precision: str, *, device: torch.device, quick: bool,
            steps: int, warmup: int, live_s: float = 3.0) -> Result:
    from ..engine import StreamingAdapter, build_method
    from ..models import build_model

    spec = dict(WORKLOADS[workload])
    if quick:
        spec.update(spec["quick"])
    batch, (h, w) = spec["batch"], spec["size"]
    res = Result(workload, method, precision, spec["arch"], batch, (h, w))
    torch.manual_seed(0)
    model = method_obj = x = None
    try:
        model = build_model(spec["arch"], num_classes=spec["num_classes"]).to(device)
        method_obj = build_method(method, model, **method_options(method, model))
        opts = dict(precision="bf16" if precision.startswith("bf16") else "fp32",
                    channels_last=precision.endswith("+cl"), window=batch, min_window=1, adapt_every=1)
        frames = torch.rand(batch, 3, h, w, device=device)
        # 1. the step alone, and a prediction alone (inline adapter: nothing else runs)
        inline = StreamingAdapter(method_obj, background=False, **opts)
        inline.set_enabled(False)
        for f in frames:
            inline.predict(f)
        x = frames.contiguous(memory_format=torch.channels_last) if opts["channels_last"] else frames
        with inline._autocast():
            for _ in range(warmup):
                method_obj.step(x)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with inline._autocast():
            res.ms_per_step, res.ms_p90 = _median_ms(lambda: method_obj.step(x), steps, device)
        res.ms_per_prediction, _ = _median_ms(lambda: inline.predict(frames[0]), max(steps, 3), device)
        res.frames_per_s = batch / (res.ms_per_step / 1e3)
        if WORKLOADS[workload]["num_classes"] != 1000:  # segmentation: the node's quality estimate
            res.ms_quality = quality_ms(inline.predict(frames[0]), frames[0], max(steps, 3), device)
        res.steps = steps
        inline.close()
        # 2. live: frames at 30 Hz, adaptation in the background on its own stream
        live = StreamingAdapter(method_obj, background=True, **opts)
        live.set_enabled(bool(method_obj.ADAPTS))  # 'source' only predicts
        period, lat = 1.0 / CAMERA_HZ, []
        t_start = time.perf_counter()
        k = 0
        while time.perf_counter() - t_start < live_s:
            target = t_start + k * period
            if target > time.perf_counter():
                time.sleep(target - time.perf_counter())
            t0 = time.perf_counter()
            out = live.predict(frames[k % batch])
            _sync(device)
            lat.append((time.perf_counter() - t0) * 1e3)
            k += 1
        elapsed = time.perf_counter() - t_start
        st = live.stats()
        live.close()
        res.steps_per_s_at_30hz = st["adapt_steps"] / elapsed
        res.prediction_p50_ms_at_30hz = statistics.median(lat) if lat else float("nan")
        if device.type == "cuda":
            res.peak_mem_gib = torch.cuda.max_memory_allocated(device) / 2**30
        if st["errors"]:
            res.notes.append(f"{st['errors']} step errors: {st['last_error'][:80]}")
        if opts["precision"] == "bf16":
            res.notes.append("bf16 autocast")
        if not torch.isfinite(out.float()).all():
            res.notes.append("non-finite logits")
        if method_obj.stats.get("nan_skips"):
            res.notes.append(f"nan_skips={method_obj.stats['nan_skips']}")
    except Exception as err:  # one failing combination must not end the benchmark
        res.status, res.error = "error", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    finally:
        model = method_obj = x = None  # noqa: F841  (free before the next combination)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def quality_ms(logits: torch.Tensor, image: torch.Tensor, n: int, device: torch.device) -> float:
    """Median ms of the quality estimate of one output (``runtime.quality.QualityEstimator`` with a
    calibration that uses every signal: its most expensive form), beside the prediction."""
    from ..runtime.quality import FORMAT, SIGNALS, QualityEstimator

    est = QualityEstimator({"format": FORMAT, "features": list(SIGNALS), "weights": [0.0] * (len(SIGNALS) + 1)})
    return _median_ms(lambda: est(logits, image), n, device)[0]


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), cudnn_benchmark=torch.backends.cudnn.benchmark,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_conv=torch.backends.cudnn.allow_tf32)
    else:
        info.update(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def markdown(results: list[Result], info: dict) -> str:
    where = info.get("gpu") or f"CPU ({info.get('cpu')}, {info.get('threads')} threads)"
    lines = [f"GPU benchmark on {where}, torch {info['torch']}"
             + (f", CUDA {info['cuda']}" if info.get("cuda") else "") + ". "
             "ms/step = median of `method.step(x)` on the step batch; ms/pred = median of the streaming "
             "adapter's `predict` on one frame; steps/s @30 Hz = adaptation steps per second while frames "
             "arrive at 30 Hz (background worker, own CUDA stream), pred p50 its prediction latency then; "
             "peak = max GPU memory allocated; quality = the per-output quality estimate (every signal), "
             "ms and % of ms/pred. Random weights.", "",
             "| workload | method | precision | batch × size | ms/step | p90 ms | frames/s | ms/pred | "
             "steps/s @30 Hz | pred p50 @30 Hz | peak GiB | quality ms (%) | notes |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        wl = f"{r.workload} ({r.arch})"
        dims = f"{r.batch} × {r.size[0]}×{r.size[1]}"
        if r.status != "ok":
            lines.append(f"| {wl} | {r.method} | {r.precision} | {dims} | – | – | – | – | – | – | – | – | {r.status}: "
                         f"{r.error.replace('|', '/')} |")
            continue
        mem = "–" if r.peak_mem_gib != r.peak_mem_gib else f"{r.peak_mem_gib:.2f}"
        q = ("–" if r.ms_quality != r.ms_quality else
             f"{r.ms_quality:.2f} ({100 * r.ms_quality / r.ms_per_prediction:.0f} %)")
        lines.append(f"| {wl} | {r.method} | {r.precision} | {dims} | {r.ms_per_step:.1f} | {r.ms_p90:.1f} | "
                     f"{r.frames_per_s:.1f} | {r.ms_per_prediction:.1f} | {r.steps_per_s_at_30hz:.2f} | "
                     f"{r.prediction_p50_ms_at_30hz:.1f} | {mem} | {q} | {', '.join(r.notes)} |")
    return "\n".join(lines) + "\n"


def plot_results(results: list[Result], info: dict, path: Path) -> Path:
    """ms per adaptation step per method, one bar per precision, one panel per workload."""
    from ..plots import _plt, save_figure

    plt = _plt()
    workloads = list(dict.fromkeys(r.workload for r in results))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 3.6), squeeze=False)
    for ax, wl in zip(axes[0], workloads):
        rs = [r for r in results if r.workload == wl]
        methods = list(dict.fromkeys(r.method for r in rs))
        precisions = list(dict.fromkeys(r.precision for r in rs))
        width = 0.8 / max(1, len(precisions))
        for j, prec in enumerate(precisions):
            ys = [next((r.ms_per_step for r in rs if r.method == m and r.precision == prec), float("nan"))
                  for m in methods]
            ax.bar([i + j * width for i in range(len(methods))], ys, width, label=prec)
        ax.set_xticks([i + width * (len(precisions) - 1) / 2 for i in range(len(methods))], methods,
                      rotation=30, fontsize=8)
        ax.set_ylabel("ms per adaptation step")
        ax.set_title(f"{wl} ({rs[0].arch}, {rs[0].batch} × {rs[0].size[0]}×{rs[0].size[1]})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"adaptation cost on {info.get('gpu') or 'CPU'}", fontsize=10)
    return save_figure(fig, path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tta_perception.bench.gpu", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, few steps, fp32 on CPU (for tests)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if available; "
                                                  "cpu with --quick)")
    p.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    p.add_argument("--workloads", default="cls,seg", help="comma-separated: cls, seg, lite0_seg")
    p.add_argument("--precisions", default=None, help=f"comma-separated of {', '.join(PRECISIONS)} "
                                                       "(default: all on CUDA, fp32 otherwise)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 10; 2 quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; 1 quick)")
    p.add_argument("--live-seconds", type=float, default=None,
                   help="seconds of the 30 Hz live run per combination (default 3; 0.5 quick)")
    p.add_argument("--time-budget", type=float, default=280.0,
                   help="seconds; runs not started by then are reported as skipped")
    p.add_argument("--out", default="runs/gpu_bench",
                   help="folder for gpu_bench .md/.txt/.json/.csv and gpu_bench.png")
    return p.parse_args(argv)


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    try:
        from ..engine import list_methods
    except ImportError as err:
        print(f"gpu_bench: the adaptation engine is not available ({err})", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.quick else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: CUDA requested but not available (use --quick --device cpu)", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    methods = args.methods.split(",") if args.methods else list_methods()
    unknown = [m for m in methods if m not in list_methods()]
    if unknown:
        print(f"gpu_bench: unknown method(s) {unknown}; available: {', '.join(list_methods())}", file=sys.stderr)
        return 2
    workloads = [w for w in args.workloads.split(",") if w]
    if any(w not in WORKLOADS for w in workloads):
        print(f"gpu_bench: workloads must be among {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    precisions = args.precisions.split(",") if args.precisions else (
        list(PRECISIONS) if device.type == "cuda" else ["fp32"])
    if any(p not in PRECISIONS for p in precisions):
        print(f"gpu_bench: precisions must be among {', '.join(PRECISIONS)}", file=sys.stderr)
        return 2
    steps = args.steps or (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)

    info = device_info(device)
    t_start = time.perf_counter()
    results: list[Result] = []
    for wl in workloads:
        for method in methods:
            for prec in precisions:
                if time.perf_counter() - t_start > args.time_budget:
                    spec = WORKLOADS[wl]
                    r = Result(wl, method, prec, spec["arch"], spec["batch"], spec["size"], status="skipped",
                               error="time budget used up")
                else:
                    r = run_one(wl, method, prec, device=device, quick=args.quick, steps=steps, warmup=warmup,
                                live_s=args.live_seconds or (0.5 if args.quick else 3.0))
                results.append(r)
                print(f"{wl:4s} {method:7s} {prec:7s} " + (
                    f"{r.ms_per_step:9.1f} ms/step {r.ms_per_prediction:7.1f} ms/pred "
                    f"{r.steps_per_s_at_30hz:6.2f} steps/s@30Hz {r.peak_mem_gib:6.2f} GiB"
                    + (f" quality {r.ms_quality:.2f} ms" if r.ms_quality == r.ms_quality else "")
                    if r.status == "ok" else f"{r.status}: {r.error}"), flush=True)
    info["wall_s"] = round(time.perf_counter() - t_start, 1)
    info.update(steps=steps, warmup=warmup, quick=args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(results, info)
    files = write_report(out, "gpu_bench", text=table, markdown=table,
                         payload={"info": info, "results": [asdict(r) for r in results]},
                         rows=[{k: v for k, v in asdict(r).items() if k != "notes"} for r in results])
    if any(r.status == "ok" for r in results):
        files["png"] = str(plot_results(results, info, out / "gpu_bench.png"))
    print(f"wrote {', '.join(files.values())} in {info['wall_s']} s")
    return 0 if all(r.status != "error" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
