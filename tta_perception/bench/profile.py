"""``tta-perception bench --profile-step``: what one adaptation step costs against its floor.

For every method, built as the node builds it (``runtime.Pipeline`` with the node's defaults: the
committed ``driveseg``, window 4, the NaN guard on), on the same four frames of ``dynamic``:

- **step**: the streaming adapter's adaptation step, i.e. what the node's worker runs
  (``method.step`` on the window, then the hand-over of the new weights to the inference copy);
- **floor**: only the forward and backward passes that method needs, on copies of its own modules
  with the same batch (``FLOORS``: e.g. DPLOT = teacher forward and student forward on the window and
  its mirror, the entropy gradient of the selected blocks, the consistency gradient of all
  parameters), measured in the same run;
- **breakdown** with ``torch.profiler``: the engine labels its bookkeeping (``tta::snapshot`` the
  last-good copy, ``tta::nan_guard`` the finiteness check, ``tta::ema`` the teacher update,
  ``tta::publish`` the copy into the inference buffer, ``tta::monitor`` collapse monitoring) and
  torch labels ``Optimizer.step``; what is left over the floor is losses, Python and contention.

Timings are medians of step and floor timed alternately; on a shared CPU only the ratios within one
run mean anything.
"""
from __future__ import annotations

import contextlib
import copy
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .output import markdown_table, write_report

METHODS = ("norm", "tent", "eata", "sar", "cotta", "rmt", "dplot")
LABELS = ("tta::snapshot", "tta::nan_guard", "tta::ema", "tta::publish", "tta::monitor")


def _fwd(module, x):
    with torch.no_grad():
        return module(x)


_OUTPUT_GRADS: dict[tuple, torch.Tensor] = {}


def _output_grad(out: torch.Tensor) -> torch.Tensor:
    key = (tuple(out.shape), out.dtype, out.device)
    if key not in _OUTPUT_GRADS:
        _OUTPUT_GRADS[key] = torch.full_like(out, 1.0 / out.numel(), memory_format=torch.contiguous_format)
    return _OUTPUT_GRADS[key]


def _grad(outs: torch.Tensor | Sequence[torch.Tensor], params, retain_graph: bool = False) -> None:
    """The backward pass from the output(s) to ``params`` with a dense gradient map, as a per-pixel
    loss sends back (the gradient of ``out.mean()`` would arrive as one broadcast number, which
    makes some backward kernels cheaper than the method's real pass); made once per shape, untimed."""
    outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
    torch.autograd.grad(outs, list(params), grad_outputs=[_output_grad(o) for o in outs],
                        retain_graph=retain_graph, allow_unused=True)


def _fwd_bwd(module, x, params: Optional[Sequence[torch.nn.Parameter]] = None):
    with torch.enable_grad():
        _grad(module(x), params if params is not None else [p for p in module.parameters() if p.requires_grad])


def _floor_dplot(m, x):
    v = torch.cat([x, x.flip(-1)], 0) if m.cfg.paired_views else x
    _fwd(m.teacher, v)
    with torch.enable_grad():
        out = m.model(v)
        _grad(out, m._ent_params, retain_graph=True)
        _grad(out, m._all_params)


def _floor_cotta(m, x):
    _fwd(m.anchor, x)
    _fwd(m.teacher, x)
    if float(F.softmax(_fwd(m.anchor, x), 1).max(1)[0].mean()) < m.ap:  # the augmented passes ran
        if m.task == "cls":
            for _ in range(m.cfg.n_augmentations):
                _fwd(m.teacher, x)
        else:
            for s in m.cfg.seg_scales:
                hw = (max(1, int(round(x.shape[-2] * s))), max(1, int(round(x.shape[-1] * s))))
                _fwd(m.teacher, F.interpolate(x, size=hw, mode="bilinear", align_corners=True))
    _fwd_bwd(m.model, x, m.optimizers["opt"].param_groups[0]["params"])


def _floor_rmt(m, x):
    _fwd(m.teacher, x)
    with torch.enable_grad():
        _grad([m.model(x), m.model(x.flip(-1))], m.optimizers["opt"].param_groups[0]["params"])


def _floor_sar(m, x):
    params = m.optimizers["opt"].param_groups[0]["params"]
    _fwd_bwd(m.model, x, params)
    _fwd_bwd(m.model, x, params)


#: the passes each method needs per step (on the method's own modules, copied)
FLOORS: dict[str, Callable[[Any, torch.Tensor], None]] = {
    "norm": lambda m, x: _fwd(m.model, x),
    "tent": lambda m, x: _fwd_bwd(m.model, x, m.optimizers["opt"].param_groups[0]["params"]),
    "eata": lambda m, x: _fwd_bwd(m.model, x, m.optimizers["opt"].param_groups[0]["params"]),
    "sar": _floor_sar, "cotta": _floor_cotta, "rmt": _floor_rmt, "dplot": _floor_dplot,
}


@contextlib.contextmanager
def _kineto_quiet_without_cuda():
    """Keep Kineto (torch.profiler's C++ back end) off the terminal on a machine without CUDA.

    Even with only ``ProfilerActivity.CPU`` requested, a CUDA build of torch starts Kineto, which logs
    its ``USDT ... profiler_start``/``profiler_stop`` probe markers (a severity above ERROR) and, in
    post-processing, ``ERROR ... gpuGetDeviceCount failed`` (no driver) straight to the process's
    stderr, below Python. Kineto reads its minimum severity from ``KINETO_LOG_LEVEL`` once, when the
    profiler first starts in the process; set above every severity for that start (and restored
    right after, so neither this process's environment nor its children's change). A user's own
    ``KINETO_LOG_LEVEL`` wins; with CUDA present nothing changes.
    """
    if "KINETO_LOG_LEVEL" in os.environ or torch.cuda.is_available():
        yield
        return
    os.environ["KINETO_LOG_LEVEL"] = _KINETO_SILENT
    try:
        yield
    finally:
        os.environ.pop("KINETO_LOG_LEVEL", None)


#: above every Kineto severity (VERBOSE 0 ... USDT 5 in torch 2.14; fewer in older releases)
_KINETO_SILENT = "100"


def _ms(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def profile_method(name: str, frames: Sequence[torch.Tensor], *, window: int = 4, repeats: int = 9,
                   warmup: int = 2, node_params: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    from ..runtime import params as P
    from ..runtime.pipeline import Pipeline

    cfg = P.defaults()
    cfg.update(method=name, device="cpu", window=window, adapt_every=window, **(node_params or {}))
    pipe = Pipeline(cfg, background=False)
    try:
        adapter, method = pipe.adapter, pipe.method
        adapter.set_enabled(False)
        for f in frames[:window]:
            adapter.predict(f)
        adapter.set_enabled(True)
        shadow = copy.deepcopy(method)  # the floor must not move the method's state
        batch = torch.stack(list(adapter._frames))
        floor_fn = FLOORS[name]
        for _ in range(warmup):
            adapter._adapt_once()
            floor_fn(shadow, batch)
        # step and floor alternate, so a change in the machine's speed (a shared CPU) moves both
        step_times, floor_times = [], []
        for _ in range(repeats):
            step_times.append(_ms(adapter._adapt_once))
            floor_times.append(_ms(lambda: floor_fn(shadow, batch)))
        step_ms, floor_ms = statistics.median(step_times), statistics.median(floor_times)
        # CPU activities only: the method runs on the CPU (device="cpu" above)
        with _kineto_quiet_without_cuda(), \
                torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                adapter._adapt_once()
        labelled: dict[str, float] = {k: 0.0 for k in LABELS}
        labelled["optimizer"] = 0.0
        for ev in prof.key_averages():
            if ev.key in labelled:
                labelled[ev.key] += ev.cpu_time_total / 1e3 / repeats
            elif ev.key.startswith("Optimizer.step#") or ev.key.startswith("Optimizer.zero_grad#"):
                labelled["optimizer"] += ev.cpu_time_total / 1e3 / repeats
        parts = {k.replace("tta::", ""): v for k, v in labelled.items()}
        rest = step_ms - floor_ms - sum(parts.values())
        return {"method": name, "step_ms": step_ms, "floor_ms": floor_ms, "step_over_floor": step_ms / floor_ms,
                "breakdown_ms": {**parts, "rest (losses, python, contention)": rest},
                "window": window, "input_size": list(pipe.input_size), "nan_guard": bool(method.cfg.nan_guard)}
    finally:
        pipe.close()


def run_profile(methods: Sequence[str] = METHODS, *, out: str | Path = "runs/bench/profile_step",
                repeats: int = 9, threads: int = 1, window: int = 4, model: str = "driveseg",
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """``model``: an embedded segmentation model (``driveseg``, ``lite0_seg``), with its committed
    bundle; the node's memory budget is lifted here (a timing, not a deployment)."""
    from ..world.sequences import iter_sequence
    from ..runtime.preprocess import frame_to_input

    if threads:
        torch.set_num_threads(int(threads))
    frames = [frame_to_input(f.rgb) for f in iter_sequence("dynamic", stop=window * 10, stride=10, workers=1)]
    rows = []
    for m in methods:
        r = profile_method(m, frames, window=window, repeats=repeats,
                           node_params={"model": model, "max_memory_mb": 1 << 20})
        log(f"[profile] {m}: step {r['step_ms']:.1f} ms, floor {r['floor_ms']:.1f} ms, "
            f"{r['step_over_floor']:.2f}x")
        rows.append(r)
    flat = [{"method": r["method"], "step_ms": r["step_ms"], "floor_ms": r["floor_ms"],
             "step_over_floor": r["step_over_floor"], **{k: v for k, v in r["breakdown_ms"].items()}} for r in rows]
    cols = list(flat[0]) if flat else []
    text = "\n".join([f"adaptation step vs its floor ({model} 128x256, window {window}, {threads} thread(s), "
                      f"median of {repeats}; ms)",
                      markdown_table(flat, cols, fmt="{:.2f}")])
    payload = {"settings": {"methods": list(methods), "model": model, "repeats": repeats, "threads": threads,
                            "window": window},
               "rows": rows}
    files = write_report(Path(out), "profile_step", text=text, payload=payload, rows=flat,
                         markdown=markdown_table(flat, cols, fmt="{:.2f}"))
    log(text)
    return {"rows": rows, "files": files, "text": text}
