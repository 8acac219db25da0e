"""Streaming-adapter wiring: the engine's ``StreamingAdapter`` built one way for the node, the replay
and ``bench --stream``, so the node's numbers are the benchmark's."""
from __future__ import annotations

from typing import Any

from .errors import ConfigError


def resolve_predict_mode(mode: str, method, strict: bool = True) -> str:
    """``auto`` -> the paper's own prediction on CUDA, the student alone on a CPU (where the method
    predicts with more than one model); ``student``/``teacher`` need that model: refused when
    ``strict`` (the node), else the method's own prediction (the benchmark's rows for methods
    without a teacher)."""
    from ..engine.streaming import PREDICT_MODES

    modules = method.inference_modules()
    if mode == "auto":
        # The paper's DPLOT prediction is 4 forward passes (student and teacher on x and flip(x)):
        # cheap on a GPU, but 3.0x the source node's latency on a 2-core CPU (96 vs 32 ms), where
        # the student alone costs 0.6 mIoU in the streaming benchmark (docs/node_benchmark.md,
        # docs/benchmark.md "--predict student"). A deliberate, documented deviation for CPUs.
        cpu = method.device.type == "cpu"
        return "student" if cpu and len(modules) > 1 and "model" in modules else "method"
    if mode not in PREDICT_MODES:
        raise ConfigError(f"parameter 'predict_mode' must be one of {', '.join(PREDICT_MODES)}, got {mode!r}")
    if mode == "method":
        return mode
    key = "model" if mode == "student" else "teacher"
    if not strict:
        return mode if (method.ADAPTS and key in modules) else "method"
    if key not in modules:
        raise ConfigError(f"parameter 'predict_mode' is {mode!r} but method {method.name!r} has no "
                          f"{mode}; use 'method'" + (" or 'student'" if mode == "teacher" else ""))
    return mode


def build_adapter(method, *, window: int, adapt_every: int, min_window: int | None = None,
                  predict_mode: str = "method", bn_stats: str = "auto", background: bool = False,
                  adapt_nice: int = 0, adapt_threads: int = 0, precision: str = "fp32",
                  channels_last: bool = False, domains: Any = None):
    """A ``StreamingAdapter`` over ``method`` (a step needs ``min_window`` frames: 2, or the window
    when smaller); a method that never adapts ('source') starts disabled."""
    from ..engine.streaming import StreamingAdapter

    window = int(window)
    adapter = StreamingAdapter(method, window=window, adapt_every=int(adapt_every),
                               background=background, min_window=min(2, window) if min_window is None else min_window,
                               predict_mode=predict_mode, bn_stats=bn_stats, adapt_nice=adapt_nice,
                               adapt_threads=adapt_threads, precision=precision, channels_last=channels_last,
                               domains=domains)
    if not getattr(method, "ADAPTS", True):
        adapter.set_enabled(False)
    return adapter


def adapter_options(cfg: dict[str, Any], method) -> dict[str, Any]:
    """:func:`build_adapter` keyword arguments from the node parameters (the node, the replay and the
    weather loop build their adapters alike)."""
    import torch

    cpu = method.device.type == "cpu"
    threads = int(cfg["adapt_threads"])
    if threads == 0 and cpu:  # auto: leave inference half of the cores
        threads = max(1, torch.get_num_threads() // 2)
    window = int(cfg["window"])
    return {"window": window, "adapt_every": int(cfg["adapt_every"]), "min_window": min(2, window),
            "predict_mode": resolve_predict_mode(str(cfg["predict_mode"]), method),
            "bn_stats": str(cfg["bn_stats"]), "adapt_nice": int(cfg["adapt_nice"]) if cpu else 0,
            "adapt_threads": threads, "precision": str(cfg["precision"]),
            "channels_last": bool(cfg["channels_last"])}
