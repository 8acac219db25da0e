"""Frame in, outputs out: model loading, device choice, pre/post-processing around the engine.

No rclpy here: the node only converts messages and publishes what this module returns, so the numbers
it publishes are the engine's (``StreamingAdapter.predict``) on the same [0, 1] frames the benchmark
feeds. Heavy imports (torch, the engine, the models) happen when a pipeline is built, i.e. in the
node's configure transition.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import params as P


STATE_FORMAT = "tta_perception.ros/1"


from .scoring import nearest_resize  # noqa: E402
from .spin import ConfigError  # noqa: E402,F401  (re-exported: the node's refusals)


def save_state_file(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` atomically: a reader (or a crash) never sees a half-written file."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _to_cpu(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ----------------------------------------------------------------------------------------- devices
def resolve_device(requested: str) -> tuple[str, Optional[str]]:
    """``auto`` -> cuda when available else cpu (+ warning); ``cuda`` without CUDA is an error."""
    import torch

    if not P.DEVICE_RE.match(requested or ""):
        raise ConfigError(f"parameter 'device' must be one of auto, cpu, cuda, cuda:N; got {requested!r}")
    if requested == "cpu":
        return "cpu", None
    available = torch.cuda.is_available()
    if requested == "auto":
        if available:
            return "cuda", None
        return "cpu", "device 'auto': CUDA not available, running on CPU"
    if not available:
        raise ConfigError(f"parameter 'device' is {requested!r} but CUDA is not available "
                          "(use device:=auto or device:=cpu)")
    index = int(requested.split(":")[1]) if ":" in requested else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"parameter 'device' is {requested!r} but only "
                          f"{torch.cuda.device_count()} CUDA device(s) exist")
    return requested, None


def is_cuda_oom(err: BaseException) -> bool:
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(err, oom)) or "CUDA out of memory" in str(err)


# ------------------------------------------------------------------------------------------ models
def _looks_like_path(name: str) -> bool:
    return os.sep in name or name.endswith((".pt", ".pth", ".ckpt")) or Path(name).exists()


def build_architecture(arch: str):
    """A registered model name, or ``package.module:function`` returning a TTAModel (user models)."""
    if ":" in arch:
        module_name, _, attr = arch.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"parameter 'architecture': cannot import {arch!r} ({err})") from None
        return fn()
    from tta_perception.models import build_model, list_models

    if arch not in list_models():
        raise ConfigError(f"parameter 'architecture' must be one of {', '.join(list_models()) or '(none)'}"
                          f" or 'module:function'; got {arch!r}")
    return build_model(arch)


def load_checkpoint_into(model, path: Path) -> None:
    """Safe (``weights_only``) load of a state dict; errors name the file and the mismatched keys."""
    try:
        from tta_perception.models.public import load_weights
    except ImportError:
        load_weights = None
    if load_weights is not None:
        try:
            load_weights(model, path, strict=True)
        except (FileNotFoundError, ValueError, RuntimeError, KeyError) as err:
            raise ConfigError(f"parameter 'model': {_one_line(err)}") from None
        return
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle with code, ...
        raise ConfigError(f"checkpoint {str(path)!r} cannot be loaded: {_one_line(err)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {str(path)!r} holds no state dict")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(f"checkpoint {str(path)!r} does not match the architecture: missing "
                          f"{list(result.missing_keys)[:5]}, unexpected {list(result.unexpected_keys)[:5]}")


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def load_model(cfg: dict[str, Any], device: str):
    """The source model named by ``model`` (+ ``architecture``), on ``device``, checked.

    - ``architecture`` set: build it (registered name or ``module:function``) and, unless ``model``
      repeats it, load the checkpoint ``model`` into it;
    - ``model`` a path: a checkpoint that records its architecture (``models.checkpoint`` format);
    - otherwise an embedded model with its committed weights.
    """
    from tta_perception.models import check_model

    name, arch = cfg["model"].strip(), cfg["architecture"].strip()
    if arch:
        model = build_architecture(arch)
        if name and name != arch:
            path = Path(os.path.expanduser(name))
            if not path.is_file():
                raise ConfigError(f"parameter 'model': checkpoint {str(path)!r} not found")
            load_checkpoint_into(model, path)
    elif _looks_like_path(name):
        path = Path(os.path.expanduser(name))
        if not path.is_file():
            raise ConfigError(f"parameter 'model': checkpoint {str(path)!r} not found")
        model = _checkpoint_with_arch(path)
    else:
        model = _embedded_model(name)
    try:
        check_model(model)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"parameter 'model': {err}") from None
    return model.to(device).eval()


def _checkpoint_with_arch(path: Path):
    try:
        from tta_perception.models.checkpoint import load_checkpoint, read_checkpoint
    except ImportError:
        raise ConfigError("parameter 'model' is a checkpoint path: set 'architecture' too") from None
    try:
        if not read_checkpoint(path).get("arch"):
            raise ConfigError(f"parameter 'model': checkpoint {str(path)!r} records no architecture: "
                              "set parameter 'architecture'")
        return load_checkpoint(path)
    except ConfigError:
        raise
    except (ValueError, RuntimeError, KeyError) as err:
        raise ConfigError(f"parameter 'model': {_one_line(err)}") from None


def _source_loader():
    """(load_source_model, names) of the embedded models, wherever the models package keeps them."""
    try:
        from tta_perception.models import checkpoint as mod

        names = sorted(mod.read_manifest())
    except ImportError:
        try:
            from tta_perception.models import pretrained as mod
        except ImportError:
            return None, []
        names = list(getattr(mod, "list_source_models", lambda: [])())
    return getattr(mod, "load_source_model", None), names


def _embedded_model(name: str):
    """An embedded source model with its committed weights."""
    loader, names = _source_loader()
    if name not in names:
        raise ConfigError(f"parameter 'model' must be one of {', '.join(names) or '(no embedded weights)'}"
                          f" or a checkpoint path; got {name!r}")
    try:
        return loader(name, "cpu")
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise ConfigError(f"parameter 'model': {_one_line(err)}") from None


def default_bundle(cfg: dict[str, Any]) -> Optional[str]:
    """The phase-A bundle to use when 'bundle' is empty, for an embedded model: one the models
    package ships (``models.checkpoint.default_bundle(name)``, if it provides one), else the output
    of ``tta-perception prepare`` in its default place (runs/prepare/<model>_dplot.bundle, relative
    to the working directory, as the benchmark looks for it)."""
    name = cfg["model"].strip()
    if cfg["architecture"].strip() or _looks_like_path(name):
        return None
    try:
        from tta_perception.models import checkpoint

        found = getattr(checkpoint, "default_bundle", lambda _name: None)(name)
        if found:
            return str(found)
    except Exception:  # no shipped bundle: fall through
        pass
    candidate = Path("runs") / "prepare" / f"{name}_dplot.bundle"
    return str(candidate.resolve()) if candidate.is_file() else None


# --------------------------------------------------------------------------------------- palettes
def palette_for(class_names: list[str]) -> np.ndarray:
    """(256, 3) uint8 colour table: CityScapes/CARLA colours for known names, a fixed hash otherwise;
    255 (unlabeled) is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    known: dict[str, Any] = {}
    try:
        from tta_perception.world.classes import CLASS_ID, PALETTE

        known = {n: PALETTE[i] for n, i in CLASS_ID.items()}
    except ImportError:
        pass
    rng = np.random.default_rng(12345)
    spare = rng.integers(40, 256, size=(256, 3), dtype=np.uint8)
    for i, n in enumerate(class_names[:255]):
        lut[i] = known.get(n, spare[i])
    return lut


# ---------------------------------------------------------------------------------------- results
@dataclass
class Result:
    """What the node publishes for one frame (arrays are NumPy)."""

    task: str
    # classification
    topk_ids: list[int] = field(default_factory=list)
    topk_scores: list[float] = field(default_factory=list)
    # segmentation
    class_ids: Optional[np.ndarray] = None  # (H, W) uint8, 255 = unlabeled
    confidence_u8: Optional[np.ndarray] = None  # (H, W) uint8, 0-255
    confidence: Optional[np.ndarray] = None  # (H, W) float32 in [0, 1], only when asked for
    overlay: Optional[np.ndarray] = None  # (H, W, 3) uint8
    # both
    mean_confidence: float = float("nan")
    mean_entropy: float = float("nan")
    nonfinite: bool = False  # some logits were NaN/Inf (those pixels are 255 = unlabeled)


def _max_and_index(logits):
    """``logits.max(0)`` (values, uint8 indices) for (C, H, W), C <= 255, about 2x faster on a CPU:
    torch's max-with-indices over the outer dimension takes a slow path, while ``amax`` and the
    one-hot trick below are vectorised. On (float) ties the largest index wins (torch: unspecified)."""
    import torch

    lmax = logits.amax(0)
    index = torch.arange(logits.shape[0], dtype=torch.uint8, device=logits.device).view(-1, 1, 1)
    return lmax, ((logits == lmax) * index).amax(0)


def _blend(colours: np.ndarray, base: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha * colours + (1 - alpha) * base`` in uint8 (OpenCV when present: ~3x faster)."""
    try:
        import cv2

        return cv2.addWeighted(colours, float(alpha), base, 1.0 - float(alpha), 0.0)
    except ImportError:
        a = int(round(alpha * 256))
        mix = colours.astype(np.uint16) * a + base.astype(np.uint16) * (256 - a) + 128
        return (mix >> 8).astype(np.uint8)


class Pipeline:
    """Model + engine method + streaming adapter for one configuration.

    ``infer`` runs on the node's worker thread; adaptation happens on the adapter's own background
    thread, so inference never waits for it (the engine's streaming protocol).
    """

    def __init__(self, cfg: dict[str, Any]):
        import torch

        problems = P.check_all(cfg)
        if problems:
            raise ConfigError(problems[0])
        from tta_perception.engine import list_methods

        methods = sorted(list_methods())
        if cfg["method"] not in methods:
            raise ConfigError(f"parameter 'method' must be one of {', '.join(methods)}; "
                              f"got {cfg['method']!r}")
        bundle = cfg["bundle"].strip()
        if bundle and not Path(os.path.expanduser(bundle)).exists():
            raise ConfigError(f"parameter 'bundle': {bundle!r} not found (write it with "
                              "`tta-perception prepare`)")
        resume = cfg["resume_from"].strip()
        if resume and not Path(os.path.expanduser(resume)).is_file():
            raise ConfigError(f"parameter 'resume_from': {resume!r} not found")

        device, warning = resolve_device(cfg["device"])
        try:
            self._build(cfg, device, warning)
        except Exception as err:  # CUDA out of memory with device 'auto': the same on the CPU
            if device == "cpu" or cfg["device"] != "auto" or not is_cuda_oom(err):
                raise
            self.__dict__.clear()
            torch.cuda.empty_cache()
            self._build(cfg, "cpu", "device 'auto': CUDA out of memory, running on CPU")

    def _build(self, cfg: dict[str, Any], device: str, device_warning: Optional[str]) -> None:
        import torch
        from tta_perception.engine import build_method

        bundle, resume = cfg["bundle"].strip(), cfg["resume_from"].strip()
        self.device, self.device_warning = device, device_warning
        self.model = load_model(cfg, self.device)
        model_task = P.TASK_OF_MODEL[self.model.task]
        if cfg["task"] not in ("auto", model_task):
            raise ConfigError(f"parameter 'task' is {cfg['task']!r} but model {cfg['model']!r} does "
                              f"{model_task} (the embedded {cfg['task']} model is "
                              f"{P.EMBEDDED_FOR_TASK[cfg['task']]!r})")
        self.task = model_task
        names = list(cfg["class_names"]) or list(getattr(self.model, "class_names", ()) or ())
        if not names:
            names = [f"class_{i}" for i in range(self.model.num_classes)]
        if len(names) != self.model.num_classes:
            raise ConfigError(f"parameter 'class_names' has {len(names)} names but the model has "
                              f"{self.model.num_classes} classes")
        self.class_names = names
        self.palette = palette_for(names)
        size = tuple(int(v) for v in cfg["input_size"])
        if size == (0, 0):  # the model's own size
            size = tuple(getattr(self.model, "input_size", None) or P.DEFAULT_INPUT_SIZE[model_task])
        self.input_size = (int(size[0]), int(size[1]))

        from tta_perception.engine import method_class
        from tta_perception.engine.config import config_keys

        cls = method_class(cfg["method"])
        keys = set(config_keys(cls.Config))
        overrides: dict[str, Any] = {}
        for param, candidates in (("lr", ("lr", "lr_entropy")), ("lr_consistency", ("lr_consistency",))):
            key = next((k for k in candidates if k in keys), None)
            if key and cfg[param] > 0:
                overrides[key] = float(cfg[param])
        self.warnings: list[str] = [self.device_warning] if self.device_warning else []
        self.bundle = ""
        if "bundle" in getattr(cls, "RESOURCES", ()):
            self.bundle = os.path.expanduser(bundle) if bundle else (default_bundle(cfg) or "")
            if self.bundle:
                overrides["bundle"] = self.bundle
        elif bundle:
            self.warnings.append(f"method {cfg['method']!r} takes no bundle: 'bundle' ignored")
        torch.manual_seed(int(cfg["seed"]))
        try:
            self.method = build_method(cfg["method"], self.model, None, **overrides)
        except (ValueError, FileNotFoundError) as err:  # bad bundle, missing blocks, bad option
            raise ConfigError(f"method {cfg['method']!r}: {_one_line(err)}") from None
        from tta_perception.engine.streaming import StreamingAdapter

        # as the benchmark's streaming runner builds it, so the node's numbers are the benchmark's
        self.adapter = StreamingAdapter(self.method, **adapter_options(cfg, self.method), background=True)
        self.adapts = bool(getattr(self.method, "ADAPTS", True))  # False for 'source'

        if resume:
            self.load_state(Path(os.path.expanduser(resume)))
        self.set_learning_rates(cfg["lr"], cfg["lr_consistency"])
        self.set_enabled(bool(cfg["enable"]))

    def set_enabled(self, enabled: bool) -> None:
        """Adaptation on/off; a method that does not adapt ('source') never runs pointless steps."""
        self.adapter.set_enabled(bool(enabled) and self.adapts)

    # ---- state
    def state_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "method": type(self.method).__name__,
                "class_names": self.class_names, "adapter": self.adapter.state_dict()}

    def load_state(self, path: Path) -> None:
        """``resume_from``: the adapted state a ``~/save`` wrote."""
        import torch

        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            self.load_state_dict(state)
        except Exception as err:
            raise ConfigError(f"parameter 'resume_from': {str(path)!r} cannot be loaded: "
                              f"{_one_line(err)}") from None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError("not a tta_node state (format marker missing)")
        self.adapter.load_state_dict(state["adapter"])

    def cpu_state_dict(self) -> dict[str, Any]:
        """The whole adapted state with tensors on the CPU (kept while the node is inactive)."""
        return _to_cpu(self.state_dict())

    def save_state(self, path: Path) -> None:
        save_state_file(self.state_dict(), path)

    def set_learning_rates(self, lr: float, lr_consistency: float) -> list[str]:
        """Apply non-zero learning rates to the method's optimisers at run time.

        ``lr_consistency`` goes to an optimiser named ``consistency`` (DPLOT's step on all
        parameters), ``lr`` to every other one. The method's source snapshot is patched too, so a
        reset (by the service or by collapse detection) keeps the rates the user set.
        """
        changed = []
        for name, opt in _optimizers(self.method).items():
            value = lr_consistency if name == "consistency" else lr
            if not value or value <= 0:
                continue
            for group in opt.param_groups:
                group["lr"] = float(value)
            snapshot = getattr(self.method, "_source", None)
            try:
                for group in snapshot["optimizers"][name]["param_groups"]:
                    group["lr"] = float(value)
            except (TypeError, KeyError):
                pass
            changed.append(f"{name}={value:g}")
        return changed

    def close(self) -> None:
        self.adapter.close()

    # ---- frames
    def to_input(self, rgb: np.ndarray):
        """(H, W, 3) uint8 -> (3, h, w) float in [0, 1] at the model size (bilinear, antialiased)."""
        import torch
        import torch.nn.functional as F

        if not rgb.flags.writeable:  # torch warns on read-only buffers (bytes given by a caller)
            rgb = rgb.copy()
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x[None], size=self.input_size, mode="bilinear", align_corners=False,
                              antialias=True)[0].clamp_(0.0, 1.0)
        return x.to(self.device)

    def infer(self, rgb: np.ndarray, output_size: str = "input", top_k: int = 5,
              overlay_alpha: float = 0.5, overlay: bool = True, confidence_float: bool = False,
              confidence: bool = True) -> Result:
        """Predict one frame; segmentation maps are computed at model size and upsampled (nearest)
        only at the end, so the cost at camera resolution is a few array takes. ``confidence`` /
        ``overlay`` False skip those maps (the node asks for them only while someone subscribes);
        the mean confidence and entropy for diagnostics then come from every 8th pixel."""
        import torch

        x = self.to_input(rgb)
        with torch.no_grad():
            logits = self.adapter.predict(x)
        return self.postprocess(logits, rgb, x, output_size=output_size, top_k=top_k,
                                overlay_alpha=overlay_alpha, overlay=overlay,
                                confidence_float=confidence_float, confidence=confidence)

    def postprocess(self, logits, rgb: np.ndarray, x, output_size: str = "input", top_k: int = 5,
                    overlay_alpha: float = 0.5, overlay: bool = True, confidence_float: bool = False,
                    confidence: bool = True) -> Result:
        """Logits of one frame -> the node's outputs (``infer`` after the model; timed on its own by
        ``node-bench``)."""
        import torch

        logits = logits.detach().float()
        if logits.dim() in (2, 4):  # tolerate a batch axis of one
            logits = logits[0]
        if self.task == "classification":
            prob = torch.softmax(logits, dim=0)
            nonfinite = not bool(torch.isfinite(logits).all())
            k = min(int(top_k), prob.numel())
            scores, idx = prob.topk(k)
            entropy = -(prob * torch.log(prob.clamp_min(1e-12))).sum()
            return Result(task=self.task, topk_ids=[int(i) for i in idx.cpu()],
                          topk_scores=[float(s) for s in scores.cpu()],
                          mean_confidence=float(scores[0]), mean_entropy=float(entropy),
                          nonfinite=nonfinite)
        # Segmentation, in as few passes over (C, H, W) as possible: max -> ids, and
        # confidence = max softmax = 1 / sum(exp(l - max)); a NaN/Inf logit makes it non-finite.
        lmax, ids = _max_and_index(logits)
        want_conf = confidence or confidence_float
        if want_conf:
            conf = torch.exp(logits - lmax).sum(0).reciprocal_()
            finite = torch.isfinite(conf) & torch.isfinite(lmax)
        else:  # a NaN logit makes the max NaN; +inf makes it inf
            finite = torch.isfinite(lmax)
        nonfinite = not bool(finite.all())
        ids = torch.where(finite, ids, torch.full_like(ids, 255)).to(torch.uint8).cpu().numpy()
        # mean confidence / entropy for diagnostics only: every 8th pixel each way is plenty
        # (a small contiguous copy; non-finite pixels drop out of the means)
        logp = torch.log_softmax(logits[:, ::8, ::8].contiguous(), dim=0)
        p = logp.exp()
        ent, pmax = -(p * logp).sum(0), p.amax(0)
        sub_ok = torch.isfinite(ent) & torch.isfinite(pmax)
        if bool(sub_ok.any()):
            mean_ent, sub_conf = float(ent[sub_ok].mean()), float(pmax[sub_ok].mean())
        else:
            mean_ent = sub_conf = float("nan")
        if want_conf:
            conf = torch.where(finite, conf, torch.zeros_like(conf)).cpu().numpy().astype(np.float32)
            mean_conf = float(conf.mean())
        else:
            conf, mean_conf = None, sub_conf
        if output_size == "input":
            height, width = rgb.shape[:2]
            base = rgb
        else:
            height, width = self.input_size
            base = (x.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        blend = None
        if overlay:  # colours looked up at model size, then upsampled with the ids (cheaper)
            colours = nearest_resize(self.palette.take(ids, axis=0), height, width)
            blend = _blend(np.ascontiguousarray(colours), np.ascontiguousarray(base), overlay_alpha)
        conf8 = None
        if confidence:
            conf8 = (conf * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
            conf8 = np.ascontiguousarray(nearest_resize(conf8, height, width))
        ids = nearest_resize(ids, height, width)
        return Result(task=self.task, class_ids=np.ascontiguousarray(ids), confidence_u8=conf8,
                      confidence=np.ascontiguousarray(nearest_resize(conf, height, width)) if confidence_float else None,
                      overlay=blend,
                      mean_confidence=mean_conf, mean_entropy=mean_ent, nonfinite=nonfinite)

    def selected_blocks(self) -> list[str]:
        """Blocks the method adapts selectively (DPLOT's domain-specific blocks), if any."""
        for owner, attr in ((self.method, "blocks"), (getattr(self.method, "cfg", None), "blocks")):
            blocks = getattr(owner, attr, None)
            if blocks:
                return [str(b) for b in blocks]
        return []

    def stats(self) -> dict[str, Any]:
        try:
            s = dict(self.adapter.stats())
        except Exception:  # statistics must never take the node down
            s = {}
        return s


def adapter_options(cfg: dict[str, Any], method) -> dict[str, Any]:
    """``StreamingAdapter`` keyword arguments from the node parameters (the node, replay and the
    weather loop build their adapters alike)."""
    import torch
    from tta_perception.engine.streaming import PREDICT_MODES

    window = int(cfg["window"])
    mode = str(cfg["predict_mode"])
    cpu = method.device.type == "cpu"
    if mode == "auto":
        # The paper's DPLOT prediction is 4 forward passes (student and teacher on x and flip(x)):
        # cheap on a GPU, but 3.0x the source node's latency on a 2-core CPU (96 vs 32 ms), where
        # the student alone costs 0.6 mIoU in the streaming benchmark (docs/node_benchmark.md,
        # docs/benchmark.md "--predict student"). A deliberate, documented deviation for CPUs.
        mode = "student" if cpu and len(method.inference_modules()) > 1 and "model" in method.inference_modules() \
            else "method"
    if mode not in PREDICT_MODES:
        raise ConfigError(f"parameter 'predict_mode' must be one of {', '.join(PREDICT_MODES)}, got {mode!r}")
    if mode != "method":
        key = "model" if mode == "student" else "teacher"
        if key not in method.inference_modules():
            raise ConfigError(f"parameter 'predict_mode' is {mode!r} but method {method.name!r} has no "
                              f"{mode}; use 'method'" + (" or 'student'" if mode == "teacher" else ""))
    threads = int(cfg["adapt_threads"])
    if threads == 0 and cpu:  # auto: leave inference half of the cores
        threads = max(1, torch.get_num_threads() // 2)
    return {"window": window, "adapt_every": int(cfg["adapt_every"]), "min_window": min(2, window),
            "predict_mode": mode, "bn_stats": str(cfg["bn_stats"]),
            "adapt_nice": int(cfg["adapt_nice"]) if cpu else 0,
            "adapt_threads": threads}


def _optimizers(method) -> dict[str, Any]:
    """The method's optimisers by name (the engine keeps them in ``method.optimizers``)."""
    found = getattr(method, "optimizers", None)
    if isinstance(found, dict):
        return dict(found)
    single = getattr(method, "optimizer", None)
    return {"opt": single} if single is not None else {}
