"""``rmt``: robust mean teacher (Döbler et al., CVPR 2023), source-free variant (no source replay,
``LAMBDA_CE_SRC = 0``), as the reference framework's ``methods/rmt.py``.

Loss = λ_trg · mean(½ SCE(student(x), teacher(x)) + ½ SCE(student(aug(x)), teacher(x)))
     + λ_cont · contrastive loss between [nearest source prototype, f(x), f(aug(x))] (SupCon form,
       through a 2-layer projector trained with the model). Prediction = student + teacher logits (the
halves of the last step's prediction in ``last_parts``).
The source prototypes come from the phase-A bundle (resource ``bundle``, the source model's class
means on the source data, as ``rmt.py`` extracts them) or ``prototypes=`` (C, D), else from the
warm-up's source batches; without prototypes the contrastive term is off (stats).

Warm-up (``warmup``):
- ``own`` (official ``rmt.py``): the mean-teacher warm-up runs here, on source batches at the TEST
  batch size (resource ``warmup_batches``; ``rmt.py`` builds its source loader with
  ``TEST.BATCH_SIZE``), ``warmup_samples // batch`` steps, through the optimiser that then adapts:
  its Adam moments (and the projector's parameter group, added before the warm-up as in ``rmt.py``)
  carry into adaptation, and ``reset()`` returns to this warmed state. ``warmup_state`` (from
  :meth:`RMT.warmup_state` of an identical setup) loads a cached result instead of recomputing it.
- ``bundle``: the phase-A bundle's warmed student/teacher (DPLOT's warm-up, at the source batch size
  of ``prepare``) and a fresh Adam. The node uses it: it has no source data at run time.
- ``auto`` (default): ``own`` for classification when ``warmup_batches`` or ``warmup_state`` is given
  (the benchmark gives them), ``bundle`` otherwise: the node, and segmentation, whose RMT is our
  extension (the reference framework has no segmentation RMT) and keeps the phase-A warm-up.
``stats["warmup"]`` says which one ran.

Segmentation: the augmented view is photometric + flip, flipped back before the pixel-wise SCE;
the contrastive term uses ``seg_cont_pixels`` random pixel features per batch.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import cotta_augment, invertible_augment
from ..base import TTAMethod
from ..block_selection import compute_prototypes, split_batch
from ..bundle import Bundle, apply_bundle, resolve_bundle
from ..config import MethodConfig, _check, check_optimizer
from ..losses import ema_update, symmetric_cross_entropy
from ..model_utils import forward_with_features, set_bn_mode
from ..registry import register_method
from ..warmup import NUM_SAMPLES, warmup_mean_teacher

WARMUP_STATE_FORMAT = "tta_perception.rmt_warmup/1"


@dataclass
class RMTConfig(MethodConfig):
    optimizer: str = "adam"       # cfgs/cifar10_c/rmt.yaml OPTIM.METHOD (ImageNet-C: SGD 0.01)
    lr: float = 1e-3              # cfgs/cifar10_c/rmt.yaml OPTIM.LR
    beta: float = 0.9             # OPTIM.BETA
    momentum: float = 0.9         # OPTIM.MOMENTUM (SGD only)
    weight_decay: float = 0.0     # OPTIM.WD
    mt: float = 0.999             # M_TEACHER.MOMENTUM
    lambda_ce_trg: float = 1.0    # RMT.LAMBDA_CE_TRG
    lambda_cont: float = 1.0      # RMT.LAMBDA_CONT (LAMBDA_CE_SRC fixed to 0: source-free variant)
    temperature: float = 0.1      # CONTRAST.TEMPERATURE
    projection_dim: int = 128     # CONTRAST.PROJECTION_DIM
    soft_augment: bool = False    # rmt.py: get_tta_transforms(img_size) defaults
    seg_cont_pixels: int = 256    # ours: pixels sampled per batch for the seg contrastive term
    # where the warmed student/teacher come from (module docstring): auto | own | bundle
    warmup: str = "auto"
    warmup_samples: int = NUM_SAMPLES  # conf.py RMT.NUM_SAMPLES_WARM_UP; steps = samples // batch size

    def validate(self) -> None:
        super().validate()
        check_optimizer(self.optimizer)
        _check(self.warmup in ("auto", "own", "bundle"), f"warmup must be auto, own or bundle, got {self.warmup!r}")
        _check(self.warmup_samples >= 1, "warmup_samples must be >= 1")
        _check(self.lr > 0 and 0 <= self.mt <= 1, "lr > 0 and mt in [0, 1]")
        _check(self.lambda_ce_trg >= 0 and self.lambda_cont >= 0, "lambdas must be >= 0")
        _check(self.temperature > 0 and self.projection_dim >= 1 and self.seg_cont_pixels >= 1,
               "temperature > 0, projection_dim >= 1, seg_cont_pixels >= 1")


@register_method("rmt")
class RMT(TTAMethod):
    Config = RMTConfig
    PREDICTORS = ("model", "teacher")
    RESOURCES = ("bundle", "prototypes", "warmup_batches", "warmup_state", "progress")

    def setup(self, bundle: Bundle | str | None = None, prototypes: torch.Tensor | None = None,
              warmup_batches=None, warmup_state: dict | None = None, progress: bool = False) -> None:
        c = self.cfg
        mode = c.warmup
        if mode == "auto":
            given = warmup_batches is not None or warmup_state is not None
            mode = "own" if self.task == "cls" and given else "bundle"
        if mode == "own" and warmup_batches is None and warmup_state is None:
            raise ValueError("rmt warmup='own' needs source data: warmup_batches=<source batches at the test "
                             "batch size> or warmup_state=<a cached own warm-up>; warmup='bundle' uses the "
                             "phase-A bundle's warm-up")
        if mode == "own":  # the bundle only lends its prototypes; the warm-up runs below
            b = resolve_bundle(bundle)
            if b is not None:
                b.check_model(self.model)
        else:
            b = apply_bundle(self.model, bundle)
        if b is not None and prototypes is None:
            prototypes = b.prototypes
        if mode == "own" and prototypes is None and warmup_batches is not None and c.lambda_cont > 0:
            prototypes = compute_prototypes(self.model, warmup_batches, self.num_classes, None)
        set_bn_mode(self.model, "batch_ema", c.bn_momentum)
        self.model.requires_grad_(True)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        if mode == "bundle" and b is not None and b.teacher_state is not None:
            self.teacher.load_state_dict(b.teacher_state)
        self.modules["teacher"] = self.teacher
        params = list(self.model.parameters())
        self.prototypes = None
        if prototypes is not None and c.lambda_cont > 0:
            protos = prototypes.detach().to(self.device, torch.float32)
            valid = torch.isfinite(protos).all(1)  # classes absent from the source data
            self.prototypes = protos[valid]
            d = protos.shape[1]
            self.projector = nn.Sequential(nn.Linear(d, c.projection_dim), nn.ReLU(),
                                           nn.Linear(c.projection_dim, c.projection_dim)).to(self.device)
            self.modules["projector"] = self.projector
            params += list(self.projector.parameters())
        self.optimizers["opt"] = self._make_optimizer(params, c.optimizer, c.lr, c.beta, c.momentum, c.weight_decay)
        self._warmup_info: dict = {}
        if mode == "own":
            if warmup_state is not None:
                self._load_warmup(warmup_state)
            else:
                self._own_warmup(warmup_batches, progress)
        warmed = mode == "own" or bool(b is not None and b.teacher_state is not None)
        self._stats.update(contrastive=self.prototypes is not None, warmed_up=warmed,
                           warmup=mode if warmed else "none", warmup_steps=self._warmup_info.get("steps", 0))

    # ----------------------------------------------------------------- own warm-up (rmt.py)
    def _own_warmup(self, batches, progress: bool = False) -> None:
        c = self.cfg
        opt = self.optimizers["opt"]
        bs = int(split_batch(next(iter(batches)))[0].shape[0])
        steps = max(1, c.warmup_samples // bs)  # rmt.py: NUM_SAMPLES_WARM_UP // batch_size_src
        r = warmup_mean_teacher(self.model, batches, steps=steps, lr=c.lr, ema=c.mt, beta=c.beta,
                                optimizer=opt, teacher=self.teacher, progress=progress)
        set_bn_mode(self.model, "batch_ema", c.bn_momentum)   # back to the adaptation BN mode
        set_bn_mode(self.teacher, "batch_ema", c.bn_momentum)
        self._warmup_info = {"steps": r.steps, "batch_size": bs, "samples": c.warmup_samples,
                             "final_loss": r.losses[-1] if r.losses else None}

    def _load_warmup(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != WARMUP_STATE_FORMAT:
            raise ValueError("warmup_state is not an RMT warm-up state (format marker missing)")
        self.model.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        try:
            self.optimizers["opt"].load_state_dict(copy.deepcopy(state["optimizer"]))
        except (ValueError, KeyError) as e:
            raise ValueError(f"warmup_state was made for another RMT setup (optimizer groups differ: {e})") from None
        self._warmup_info = dict(state.get("info", {}))

    def warmup_state(self) -> dict:
        """The state right after the own warm-up (student, teacher, optimiser; plain tensors) for
        ``warmup_state=`` of a later identical setup (the benchmark caches it on disk). It is the
        source snapshot that ``reset()`` returns to, taken when setup ended."""
        if self._stats.get("warmup") != "own":
            raise ValueError("this RMT did not run its own warm-up (warmup='bundle')")
        src = self._source
        return {"format": WARMUP_STATE_FORMAT, "info": dict(self._warmup_info),
                "student": {k: v.detach().cpu().clone() for k, v in src["modules"]["model"].items()},
                "teacher": {k: v.detach().cpu().clone() for k, v in src["modules"]["teacher"].items()},
                "optimizer": copy.deepcopy(src["optimizers"]["opt"])}

    def inference_modules(self):
        return {"model": self.model, "teacher": self.teacher}

    def predict_with(self, modules, x):
        return modules["model"](x) + modules["teacher"](x)

    def _contrastive(self, f: torch.Tensor, f_aug: torch.Tensor) -> torch.Tensor:
        """SupCon with labels=None (positives: the three views of one sample), mode 'all'."""
        with torch.no_grad():
            sim = F.normalize(f, dim=1) @ F.normalize(self.prototypes, dim=1).T
            nearest = self.prototypes[sim.argmax(1)]
        n = f.shape[0]
        feats = torch.cat([nearest, f, f_aug], 0)                 # (3n, D): view-major like torch.unbind
        z = F.normalize(self.projector(feats), dim=1)
        logits = z @ z.T / self.cfg.temperature
        logits = logits - logits.max(1, keepdim=True)[0].detach()
        eye = torch.eye(3 * n, device=f.device)
        pos = torch.eye(n, device=f.device).repeat(3, 3) * (1 - eye)
        not_self = 1 - eye
        log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True))
        mean_pos = (pos * log_prob).sum(1) / pos.sum(1)
        return -mean_pos.mean()  # temperature / base_temperature = 1

    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        c, opt = self.cfg, self.optimizers["opt"]
        seg = self.task == "seg"
        if seg:
            x_aug, flipped = invertible_augment(x, c.soft_augment)
        else:
            x_aug, flipped = cotta_augment(x, c.soft_augment), False
        with torch.no_grad():
            t = self.teacher(x)
        with torch.enable_grad():
            f, out = forward_with_features(self.model, x)
            f_aug, out_aug = forward_with_features(self.model, x_aug)
            if flipped:
                out_aug, f_aug = out_aug.flip(-1), f_aug.flip(-1)
            loss = c.lambda_ce_trg * (0.5 * symmetric_cross_entropy(out, t)
                                      + 0.5 * symmetric_cross_entropy(out_aug, t)).mean()
            if self.prototypes is not None:
                if seg:  # sample pixel features at the same positions of both views
                    d = f.shape[1]
                    fa, fb = f.movedim(1, -1).reshape(-1, d), f_aug.movedim(1, -1).reshape(-1, d)
                    idx = torch.randperm(fa.shape[0], device=fa.device)[: c.seg_cont_pixels]
                    fa, fb = fa[idx], fb[idx]
                else:
                    fa, fb = f.flatten(1), f_aug.flatten(1)
                loss = loss + c.lambda_cont * self._contrastive(fa, fb)
            if self._minimise(loss, opt):
                ema_update(self.teacher, self.model, c.mt)
                self._commit()
        self.last_parts = {"student": out.detach(), "teacher": t.detach()}
        return (out + t).detach()
