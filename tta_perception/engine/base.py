"""The one interface every adaptation method implements.

A method owns named modules (``"model"`` = the student / adapted model; teachers, anchors,
projectors as needed) and named optimizers. The base class gives every method, from those two
dicts alone: the source snapshot and ``reset()``, ``state_dict()/load_state_dict()`` of the whole
adapted state, the NaN/Inf guard with restore of the last good state, collapse detection, and the
``stats`` counters. Subclasses implement ``setup`` and ``_adapt`` (one forward + update on a batch,
returning detached logits) and, when prediction is not simply ``model(x)``, ``inference_modules`` /
``predict_with`` (which the streaming adapter calls on its own copies of the weights).
"""
from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import math
import time
from typing import Any, ClassVar, Iterator

import torch
from torch import nn
from torch.autograd.profiler import record_function  # labels for `bench --profile-step`

from ..models.base import check_model
from .config import MethodConfig, config_keys, make_config
from .losses import predicted_classes, softmax_entropy
from .model_utils import all_finite, bn_modules, copy_into, map_tensors, model_device

STATE_FORMAT = "tta_perception.engine.method/1"


@contextlib.contextmanager
def bn_frozen(modules: dict[str, nn.Module] | list[nn.Module]) -> Iterator[None]:
    """Forward without updating BN running buffers (BN keeps using batch stats if in train mode)."""
    mods = modules.values() if isinstance(modules, dict) else modules
    touched = []
    for mod in mods:
        for m in bn_modules(mod):
            if m.training and m.track_running_stats:
                m.track_running_stats = False
                touched.append(m)
    try:
        yield
    finally:
        for m in touched:
            m.track_running_stats = True


class TTAMethod:
    """Base class. Build through :func:`tta_perception.engine.build_method`."""

    name: ClassVar[str] = "base"
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # keyword arguments of the constructor that are resources, not config (e.g. source batches)
    RESOURCES: ClassVar[tuple[str, ...]] = ()
    # False for methods that never change the model (collapse detection then has nothing to reset)
    ADAPTS: ClassVar[bool] = True
    # modules that never change after setup (e.g. CoTTA's anchor): saved in state_dict, but left
    # out of the per-step NaN check and last-good snapshot
    STATIC_MODULES: ClassVar[tuple[str, ...]] = ()
    # the keys of ``inference_modules()``: what a prediction can be made with alone ("model" = the
    # student; "teacher"), known before a method is built (the node checks predict_mode with it)
    PREDICTORS: ClassVar[tuple[str, ...]] = ("model",)
    # the named halves of the last step's prediction (logits that sum to it, from the same forward
    # passes: DPLOT's student and teacher); None for methods whose prediction is one output
    last_parts: dict[str, torch.Tensor] | None = None
    # video (engine.temporal): True when the method's step uses the motion between window frames; the
    # streaming adapter then calls ``set_motion`` before each step (DPLOT ``temporal_pl``)
    uses_motion: bool = False

    def __init__(self, model: nn.Module, cfg: Any = None, **overrides: Any):
        check_model(model)
        resources = {k: overrides.pop(k) for k in list(overrides) if k in self.RESOURCES}
        unknown = [k for k in overrides if k not in config_keys(self.Config)]
        if unknown:
            allowed = sorted(config_keys(self.Config)) + sorted(self.RESOURCES)
            raise ValueError(f"unknown option(s) {sorted(unknown)} for method {self.name!r}; allowed: {allowed}")
        self.cfg = make_config(self.Config, cfg, **overrides)
        self.model = model
        self.task: str = model.task
        self.num_classes: int = int(model.num_classes)
        self.modules: dict[str, nn.Module] = {"model": model}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self._stats: dict[str, Any] = {
            "method": self.name, "steps": 0, "updates": 0, "nan_skips": 0, "resets": 0,
            "collapse_resets": 0, "method_resets": 0, "filtered_steps": 0,
            "last_loss": float("nan"), "last_entropy": float("nan"), "last_step_ms": float("nan"),
            "dominant_fraction": float("nan"), "marginal_entropy": float("nan"),
        }
        self._pred_window: collections.deque[torch.Tensor] = collections.deque(maxlen=self.cfg.collapse_window)
        self._verified = False  # the state was checked finite since the last forward (by _commit)
        self.setup(**resources)
        self._source = self._capture()
        self._good = self._capture() if self.cfg.nan_guard else None

    # ------------------------------------------------------------------ subclass hooks
    def setup(self, **resources: Any) -> None:
        """Configure the model, create teachers and optimizers (called once from __init__)."""

    def _adapt(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Forward + update on batch ``x``; returns the batch prediction (logits, detached)."""
        raise NotImplementedError

    def inference_modules(self) -> dict[str, nn.Module]:
        """The modules ``predict_with`` reads (copied by the streaming adapter)."""
        return {"model": self.model}

    def predict_with(self, modules: dict[str, nn.Module], x: torch.Tensor) -> torch.Tensor:
        """Prediction from ``modules`` (the method's own or the streaming copies), no adaptation."""
        return modules["model"](x)

    def set_motion(self, serials: list[int], motions: list[Any]) -> None:
        """The next step's frames: serial numbers (consecutive frames differ by one) and each one's
        ``engine.temporal.Motion`` from the previous frame (None: no link). Used when ``uses_motion``."""

    def _extra_state(self) -> dict[str, Any]:
        """Method-specific state (plain tensors / numbers) beyond modules and optimizers."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ public API
    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Predict AND adapt on batch ``x`` (float (B, 3, H, W) in [0, 1]); returns logits."""
        x = self._prepare(x)
        if self.cfg.episodic:
            self._restore(self._source)
        t0 = time.perf_counter()
        logits = None
        self.last_parts = None
        skips_before = self._stats["nan_skips"]
        with torch.inference_mode(False):  # adaptation needs autograd even if the caller is in inference mode
            if x.is_inference():
                x = x.clone()
            for _ in range(self.cfg.steps):
                self._verified = False
                logits = self._adapt(x)
                self._verify()
        assert logits is not None
        logits = logits.detach()
        self._stats["steps"] += 1
        self._stats["last_step_ms"] = (time.perf_counter() - t0) * 1e3
        # a skipped batch (NaN loss or state) or a non-finite prediction says nothing about collapse
        if self._stats["nan_skips"] == skips_before and bool(torch.isfinite(logits).all()):
            self._monitor(logits)
        return logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Prediction with the current weights, no adaptation and no BN-buffer update."""
        x = self._prepare(x)
        mods = self.inference_modules()
        with bn_frozen(mods):
            return self.predict_with(mods, x).detach()

    @torch.no_grad()
    def to(self, device: torch.device | str) -> "TTAMethod":
        """Move the whole adapted state (modules, optimiser state, the source and last-good
        snapshots, method state) to ``device``: e.g. the CPU after CUDA ran out of memory."""
        device = torch.device(device)
        for m in self.modules.values():
            m.to(device)
        for o in self.optimizers.values():
            for st in o.state.values():
                for k, v in list(st.items()):
                    if isinstance(v, torch.Tensor) and k != "step":
                        st[k] = v.to(device)
        move = lambda t: t.to(device)  # noqa: E731
        self._source = map_tensors(self._source, move)
        if self._good is not None:
            self._good = map_tensors(self._good, move)
        self._load_extra_state(map_tensors(self._extra_state(), move))
        for name, value in list(vars(self).items()):  # e.g. RMT's prototypes, EATA's Fisher terms
            if name not in ("modules", "optimizers", "_source", "_good", "_pred_window") and \
                    isinstance(value, (torch.Tensor, dict, list, tuple)) and not isinstance(value, nn.Module):
                setattr(self, name, map_tensors(value, move))
        return self

    def reset(self, count: bool = True) -> None:
        """Back to the source state (weights, teachers, optimizers, method state); ``count``: a
        reset the user or the safety asked for (domain memory's returns to the source are not)."""
        self._restore(self._source)
        self._pred_window.clear()
        if count:
            self._stats["resets"] += 1

    def state_dict(self) -> dict[str, Any]:
        """The whole adapted state as plain tensors / dicts (torch.save + weights_only load safe)."""
        snap = self._capture()
        return {
            "format": STATE_FORMAT, "method": self.name, "config": dataclasses.asdict(self.cfg),
            "modules": snap["modules"], "optimizers": snap["optimizers"], "extra": snap["extra"],
            "stats": {k: v for k, v in self._stats.items()},
            "pred_window": [t.clone() for t in self._pred_window],
        }

    def load_state_dict(self, state: dict[str, Any], stats: bool = True) -> None:
        """Restore a ``state_dict``; ``stats=False`` keeps this run's counters (domain memory
        switching states within one stream)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError("not a tta_perception method state (missing/unknown 'format')")
        if state.get("method") != self.name:
            raise ValueError(f"state is for method {state.get('method')!r}, this is {self.name!r}")
        missing = set(self.modules) - set(state["modules"])
        if missing:
            raise ValueError(f"state lacks modules {sorted(missing)}")
        self._restore({"modules": state["modules"], "optimizers": state["optimizers"], "extra": state["extra"]})
        if stats:
            self._stats.update(state.get("stats", {}))
        self._pred_window.clear()
        for t in state.get("pred_window", []):
            self._pred_window.append(t.clone())
        if self._good is not None:
            self._good = self._capture()

    # ------------------------------------------------------------------ helpers for subclasses
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected images (B, 3, H, W), got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"expected float images in [0, 1], got dtype {x.dtype}")
        return x.to(self.device, non_blocking=True)

    def _make_optimizer(self, params: list[nn.Parameter], kind: str, lr: float, beta: float = 0.9,
                        momentum: float = 0.9, weight_decay: float = 0.0,
                        nesterov: bool = True) -> torch.optim.Optimizer:
        """Reference framework's setup_optimizer: Adam(betas=(BETA, 0.999)) or SGD(nesterov)."""
        if not params:
            raise ValueError(f"method {self.name!r}: no parameters to adapt")
        # foreach: one fused kernel per update over all tensors instead of a Python loop (torch uses
        # it by default only on CUDA); the same element-wise arithmetic
        if kind == "adam":
            return torch.optim.Adam(params, lr=lr, betas=(beta, 0.999), weight_decay=weight_decay,
                                    foreach=True)
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=nesterov and momentum > 0, foreach=True)

    def _loss_ok(self, *losses: torch.Tensor) -> bool:
        """False (and the last good state restored, counted) if any loss is NaN/Inf."""
        ok = all(bool(torch.isfinite(l.detach()).all()) for l in losses)
        if ok:
            self._stats["last_loss"] = float(sum(float(l.detach()) for l in losses))
            return True
        self._on_nonfinite()
        return False

    def _minimise(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> bool:
        """One optimiser step on ``loss``, skipped (False; last good state restored, counted) when
        the loss is NaN/Inf. The caller commits/EMA-updates after a True."""
        if not self._loss_ok(loss):
            return False
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return True

    def _commit(self) -> bool:
        """After an update: if parameters/buffers went non-finite restore the last good state,
        otherwise remember this state as the last good one."""
        self._stats["updates"] += 1
        if not self.cfg.nan_guard:
            return True
        if not self._state_finite():
            self._stats["updates"] -= 1
            self._on_nonfinite()
            return False
        self._verified = True
        self._save_good()
        return True

    def _state_finite(self) -> bool:
        with record_function("tta::nan_guard"):
            tensors = [t for k, m in self.modules.items() if k not in self.STATIC_MODULES
                       for t in list(m.parameters()) + list(m.buffers()) if t.is_floating_point()]
            return all_finite(tensors)

    def _verify(self) -> None:
        """After every ``_adapt``, whatever path it took (a filtered batch, a skipped loss): the
        forward alone changes BatchNorm running statistics, so a NaN frame can poison the state
        without any update. Not committed: non-finite -> restore the last good state, finite -> it
        becomes the last good state (the BatchNorm statistics of a filtered batch are kept)."""
        if not self.cfg.nan_guard or self._verified:
            return
        if self._state_finite():
            self._save_good()
        else:
            self._on_nonfinite()

    def _method_reset(self) -> None:
        """A reset the method itself asks for (e.g. SAR's model recovery)."""
        self.reset()
        self._stats["method_resets"] += 1

    # ------------------------------------------------------------------ internals
    def _on_nonfinite(self) -> None:
        self._stats["nan_skips"] += 1
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=True)
        if self._good is not None:
            self._restore(self._good)
            self._verified = True  # the state is the last good one again

    def _capture(self) -> dict[str, Any]:
        return {
            "modules": {k: {n: t.detach().clone() for n, t in m.state_dict().items()}
                        for k, m in self.modules.items()},
            "optimizers": {k: copy.deepcopy(o.state_dict()) for k, o in self.optimizers.items()},
            "extra": _clone_tree(self._extra_state()),
        }

    def _save_good(self) -> None:
        """Remember the current state as the last good one, copying into the tensors of the previous
        snapshot (fused, no allocation per step)."""
        with record_function("tta::snapshot"):
            self._save_good_now()

    def _save_good_now(self) -> None:
        if self._good is None:
            self._good = self._capture()
            return
        dst: list[torch.Tensor] = []
        src: list[torch.Tensor] = []

        def pair(d: Any, s: Any) -> Any:  # returns the value to keep in the snapshot
            if isinstance(s, torch.Tensor):
                if isinstance(d, torch.Tensor) and d.shape == s.shape and d.dtype == s.dtype and d.device == s.device:
                    dst.append(d)
                    src.append(s.detach())
                    return d
                return s.detach().clone()
            if isinstance(s, dict):
                d = d if isinstance(d, dict) else {}
                return {k: pair(d.get(k), v) for k, v in s.items()}
            if isinstance(s, (list, tuple)):
                d = d if isinstance(d, (list, tuple)) and len(d) == len(s) else [None] * len(s)
                return type(s)(pair(a, b) for a, b in zip(d, s))
            return copy.deepcopy(s)

        g = self._good
        for k, m in self.modules.items():
            if k not in self.STATIC_MODULES:
                g["modules"][k] = pair(g["modules"].get(k), m.state_dict())
        g["optimizers"] = {k: pair(g["optimizers"].get(k), o.state_dict()) for k, o in self.optimizers.items()}
        g["extra"] = pair(g.get("extra"), self._extra_state())
        with torch.no_grad():
            copy_into(dst, src)

    @torch.no_grad()
    def _restore(self, snap: dict[str, Any]) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(snap["modules"][k], strict=True)
        for k, o in self.optimizers.items():
            if k in snap["optimizers"]:
                # deepcopy: Optimizer.load_state_dict may alias the given tensors
                o.load_state_dict(copy.deepcopy(snap["optimizers"][k]))
            o.zero_grad(set_to_none=True)
        self._load_extra_state(_clone_tree(snap["extra"]))

    @torch.no_grad()
    @record_function("tta::monitor")
    def _monitor(self, logits: torch.Tensor) -> None:
        # statistics only: a segmentation map is sampled every 8th pixel each way (64x cheaper, the
        # full map cost 40-60 ms per step on a CPU: bench --profile-step)
        ent = softmax_entropy((logits[..., ::8, ::8] if logits.dim() == 4 else logits).float())
        self._stats["last_entropy"] = float(ent.mean())
        counts = torch.bincount(predicted_classes(logits), minlength=self.num_classes).cpu()
        self._pred_window.append(counts)
        total = torch.stack(list(self._pred_window)).sum(0).double()
        n = float(total.sum())
        if n <= 0:
            return
        p = total / n
        dom = float(p.max())
        nz = p[p > 0]
        marg = max(0.0, float(-(nz * nz.log()).sum() / math.log(max(self.num_classes, 2))))
        self._stats["dominant_fraction"] = dom
        self._stats["marginal_entropy"] = marg
        if (self.ADAPTS and self.cfg.collapse_reset and self.num_classes >= 3
                and len(self._pred_window) == self._pred_window.maxlen
                and dom >= self.cfg.collapse_max_fraction):
            self.reset()
            self._stats["collapse_resets"] += 1


def _clone_tree(obj: Any) -> Any:
    return map_tensors(obj, lambda t: t.detach().clone(), copy.deepcopy)
