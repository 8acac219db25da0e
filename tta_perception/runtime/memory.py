"""Memory: the process's resident set, giving freed memory back, and the estimate of what a
configuration needs, checked against ``max_memory_mb`` before it is built.

Why an estimate and not a trial: a 1024x2048 input took the node to 20 GB on a 24 GB machine; the
only safe moment to refuse is before allocating. The estimate is

    base RSS (torch, the engine, ROS: measured once, before the first model)
    + the model's weights times the copies the method keeps (live, source snapshot, last good state,
      the streaming adapter's two inference copies, optimiser state)
    + an adaptation step's activations: ``TRAIN_FACTOR[method] x L x pixels x window``
    + a prediction's: ``INFER_FACTOR x L x pixels``
    + the largest frame the node accepts: ``FRAME_BYTES_PER_PIXEL x max_image_pixels``
    + with the collapse guard: a frozen source model and two stored adapted states

where L is the model's own activation bytes per input pixel (the sum of every leaf module's output
in one forward, probed on a small input: it scales with the pixels for fully convolutional and
pooled models alike). The factors were calibrated on the embedded ``driveseg`` (clear-weather source
model, no test stream involved): peak RSS growth of a ``Pipeline`` stepping on random frames at
128x256, 256x512 and 512x1024 with window 4, per method, in its own process on this 2-core CPU; the
slope between the two larger sizes, over L = 518 bytes per pixel, plus 20 % (``bench/memory.py``
re-measures the node's RSS under the accepted extremes).
"""
from __future__ import annotations

import ctypes
import gc
import os
from typing import Any, Optional

MB = float(1 << 20)
#: activation bytes of an adaptation step per pixel and window frame, in units of L (see above):
#: measured 0.39 norm, 1.35 tent, 1.59 eata, 1.45 sar, 1.26 cotta, 2.94 rmt, 4.17 dplot
TRAIN_FACTOR = {"source": 0.0, "norm": 0.47, "tent": 1.62, "eata": 1.9, "sar": 1.75, "cotta": 1.5,
                "rmt": 3.5, "dplot": 5.0}
#: classification: no per-pixel logits and loss maps, so a step needs less. Measured for DPLOT on
#: EfficientNet-Lite0 at 224x224 (ImageNet weights, photos; no test stream): 3.1 (signnet: 2.4);
#: the other methods keep the segmentation factors (not measured on a classifier: conservative)
TRAIN_FACTOR_CLS = {"dplot": 3.7}
UNKNOWN_TRAIN_FACTOR = 5.0       # a method registered by someone else: the costliest known
INFER_FACTOR = 0.95              # measured 0.77 (one frame, outputs at the input size)
FRAME_BYTES_PER_PIXEL = 28       # measured ~20: the message, RGB, float copy, output maps
FIXED_MB = 120.0                 # measured 47-93 MB at the smallest size: allocator, threads
# weight copies: per module (live, source snapshot, last good state), per predictor (the streaming
# adapter's two inference copies), and optimiser state (Adam: two moments, in three of those places)
COPIES_PER_MODULE, COPIES_PER_PREDICTOR, OPTIMIZER_COPIES = 3, 2, 6
MODULES = {"cotta": 3, "rmt": 2, "dplot": 2}  # student + teachers/anchors; 1 otherwise


def rss_mb(pid: Optional[int] = None) -> float:
    """Resident set of this process (or ``pid``) in MB; NaN where /proc is missing."""
    try:
        with open(f"/proc/{pid or 'self'}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def release_freed_memory() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc ``malloc_trim``), so the RSS
    returns near its baseline after a model is dropped (glibc otherwise keeps them)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold_mb: int = 32, trim_threshold_mb: int = 1024) -> bool:
    """Let glibc reuse freed tensor memory instead of unmapping and mapping it again (call once, at
    a process's start: the node, the CLI).

    An adaptation step allocates dozens of frame-sized tensors (a DPLOT step at 128x256: 12 MB
    logits maps, 16 MB activations). glibc serves blocks above its mmap threshold with fresh
    mappings and unmaps them on free, so every step touched new pages again: ~12,000 page faults
    per DPLOT step here, and the full-resolution losses ran at half speed (issue 14:
    ``bench --profile-step``, node-bench). Serving blocks up to ``mmap_threshold_mb`` from the heap
    and keeping up to ``trim_threshold_mb`` of freed heap for reuse removes them; the resident set
    then stays at the step's working set (what the memory estimate already budgets), and
    ``release_freed_memory`` still gives it back after a reload. A user's own ``MALLOC_*_``
    environment settings win (nothing is changed then). False where glibc is not there."""
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return (libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold_mb) << 20) == 1
                and libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold_mb) << 20) == 1)
    except (OSError, AttributeError):
        return False


def activation_bytes_per_pixel(model, probe_size: tuple[int, int] = (64, 128)) -> float:
    """L: the bytes of every leaf module's output in one forward, per input pixel (probed once per
    model, cached on it)."""
    cached = getattr(model, "_tta_activation_bytes_per_pixel", None)
    if cached is not None:
        return cached
    import torch

    total = [0]

    def hook(_mod, _inp, out) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 3, *probe_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    value = total[0] / float(probe_size[0] * probe_size[1])
    try:
        model._tta_activation_bytes_per_pixel = value
    except AttributeError:
        pass
    return value


_BASE_MB: Optional[float] = None


def base_mb() -> float:
    """The process's RSS before any model: measured at the first call (after torch and the engine
    are imported, freed memory returned)."""
    global _BASE_MB
    if _BASE_MB is None:
        import torch  # noqa: F401

        from .. import engine  # noqa: F401

        release_freed_memory()
        _BASE_MB = rss_mb()
    return _BASE_MB


def estimate(cfg: dict[str, Any], model, input_size: Optional[tuple[int, int]] = None) -> dict[str, float]:
    """The MB a configuration of the node parameters ``cfg`` needs on top of the base, by part."""
    from ..engine import method_class

    method = cfg["method"]
    size = input_size or tuple(cfg["input_size"])
    if tuple(size) == (0, 0):
        size = tuple(getattr(model, "input_size", None) or (128, 256))
    pixels = float(size[0] * size[1])
    act = activation_bytes_per_pixel(model)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        predictors = len(method_class(method).PREDICTORS)
    except ValueError:
        predictors = 2
    modules = MODULES.get(method, 1)
    copies = COPIES_PER_MODULE * modules + COPIES_PER_PREDICTOR * predictors + OPTIMIZER_COPIES
    factor = TRAIN_FACTOR_CLS.get(method) if getattr(model, "task", "seg") == "cls" else None
    train = (factor or TRAIN_FACTOR.get(method, UNKNOWN_TRAIN_FACTOR)) * act * pixels * int(cfg["window"])
    # domain memory: one stored state (modules + optimiser state) per domain, on the CPU
    bank = (modules + 2) * params * int(cfg["max_domains"]) / MB if cfg.get("domain_memory") else 0.0
    # collapse guard: a frozen source model, and two stored states (the healthy one, one on probation);
    # the quality's source reference (quality_source_every) shares that frozen model, or needs its own
    adapts = method != "source" and getattr(model, "task", "seg") == "seg"
    guard = (1 + 2 * (modules + 2)) * params / MB if cfg.get("guard") and adapts else 0.0
    reference = (params / MB if adapts and not guard and cfg.get("quality", True)
                 and int(cfg.get("quality_source_every", 0)) > 0 else 0.0)
    return {"fixed": FIXED_MB, "weights": copies * params / MB, "domain_bank": bank, "guard": guard,
            "source_reference": reference,
            "adaptation_step": train / MB,
            "prediction": INFER_FACTOR * act * pixels / MB,
            "largest_frame": FRAME_BYTES_PER_PIXEL * float(cfg["max_image_pixels"]) / MB}


def check_budget(cfg: dict[str, Any], model, running=None,
                 input_size: Optional[tuple[int, int]] = None) -> Optional[str]:
    """Why ``cfg`` does not fit (None: it fits): host RAM against ``max_memory_mb``; on CUDA the
    weights and activations against the device's free memory instead. ``running``: the pipeline
    that keeps serving while the new one is built (its weights count too)."""
    from .devices import resolve_device

    parts = estimate(cfg, model, input_size)
    device = resolve_device(cfg["device"], "parameter 'device'")
    on_gpu = ("weights", "adaptation_step", "prediction") if device.type == "cuda" else ()
    if on_gpu:
        gpu = sum(parts[k] for k in on_gpu)
        free = cuda_free_mb(device)
        if gpu > free:
            return (f"configuration needs ~{gpu:.0f} MB on {device} (weights, an adaptation step and a "
                    f"prediction), {free:.0f} MB are free: lower input_size or window")
    host = {k: v for k, v in parts.items() if k not in on_gpu}
    need = sum(host.values())
    if running is not None and not on_gpu:
        need += estimate(running.cfg, running.model, running.input_size)["weights"]
    total = base_mb() + need
    budget = float(cfg["max_memory_mb"])
    if total <= budget:
        return None
    big = max(host, key=host.get)
    return (f"configuration needs ~{total:.0f} MB (base {base_mb():.0f} + {need:.0f}; largest part: "
            f"{big.replace('_', ' ')} {host[big]:.0f} MB), over max_memory_mb={budget:.0f}: lower "
            "input_size, window or max_image_pixels, or raise max_memory_mb at start-up")


def cuda_free_mb(device) -> float:
    """Free memory of a CUDA device in MB (``torch.cuda.mem_get_info``)."""
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return free / MB


