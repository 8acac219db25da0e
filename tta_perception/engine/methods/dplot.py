"""``dplot``: DPLOT phase B (Yu et al., CVPR 2024; official ``classification/methods/dplot.py``).

Per test batch x (B images)::

    views  = [x, hflip(x)]                      (paired views; the only augmentation)
    z, z_t = student(views), teacher(views)     (BN: statistics of this 2B batch; teacher no grad)
    pseudo = (z_t[:B] + back(z_t[B:])) / 2      (teacher LOGITS averaged over the pair)
    L_ent  = mean entropy(z)                    -> Adam(lr 1e-3) over the SELECTED blocks
    L_pc   = SCE(z[:B], pseudo) + SCE(back(z[B:]), pseudo) -> Adam(lr 1e-4) over ALL parameters
    teacher = 0.999 teacher + 0.001 student     (parameters)
    predict = z[:B] + back(z[B:]) + z_t[:B] + back(z_t[B:])

``back`` is the identity for classification and flips the map back for segmentation (losses per
pixel). ``last_parts`` holds the two halves of the last step's prediction from the same forward
passes, ``student`` = z[:B] + back(z[B:]) and ``teacher`` = z_t[:B] + back(z_t[B:]) (their sum is the
prediction), so the benchmark can score each alone without another pass; ``predict_parts`` gives
the same split for given modules. Both gradients are taken at the same parameters (two ``autograd.grad`` calls on one graph),
then the two Adam steps are applied: the official code stepped the first optimiser before
back-propagating the second loss through the same graph, which current PyTorch rejects.

Video (``temporal_pl``, off by default: the paper has none; ``docs/video.md``): in a stream of
consecutive frames, frame i's pseudo-label gets the previous frame's teacher output, warped to frame
i along the optical flow, as a third view: ``pseudo = (z_t + back(z_t') + warp(pseudo_{i-1})) / 3``
where the flow is valid (logits, as the pair), unchanged elsewhere. The streaming adapter hands the
window's serial numbers and motions to ``set_motion`` before the step; the previous frame is the
one before in the window (same teacher, same step) or, for the window's first frame, the last
step's pair pseudo-label of that frame (kept for the frames of the last step only, one EMA update
older). The warped term is the previous *pair* average (``temporal_pl_mode='previous'``, the
default: no pseudo-label feeds on itself), or the previous temporal pseudo-label ('recursive': an
average along the flow over the past frames, each frame back weighted 1/3 of the one after).
Without motion (batch protocol, classification, a break) the step is the paper's. Measured at
stride 1 on night driving: +0.01 mIoU (not significant), -3 % label flicker, so it stays off.

Ablations (paper): ``block_selection=False`` -> the entropy step updates ``no_bs_params``
('all' parameters by default, or 'norm' = BN/LN/GN affine as Tent); ``paired_views=False`` ->
student and teacher see only x, pseudo = z_t, L_pc = SCE(z, z_t), predict = z + z_t.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from ..base import TTAMethod
from ..bundle import Bundle, apply_bundle
from ..config import MethodConfig, _check
from ..losses import ema_update, entropy_and_symmetric_cross_entropy, hflip
from ..model_utils import named_norm_params, named_params_of_blocks, set_bn_mode
from ..temporal import warp
from ..registry import register_method


@dataclass
class DPLOTConfig(MethodConfig):
    # Selected (domain-specific) blocks from phase A; taken from the bundle when one is given.
    blocks: tuple[str, ...] | None = None
    block_selection: bool = True   # False: paper ablation "w/o block selection"
    no_bs_params: str = "all"      # entropy-step params in that ablation: 'all' | 'norm'
    paired_views: bool = True      # False: paper ablation "w/o paired view"
    lr_entropy: float = 1e-3       # dplot.py: optim.Adam(selected block params, lr=0.001)
    lr_consistency: float = 1e-4   # dplot.py: optim.Adam(model.parameters(), lr=0.0001)
    ema: float = 0.999             # dplot.py: update_ema_variables(alpha_teacher=0.999)
    temporal_pl: bool = False      # video: the previous frame's warped teacher output as a 3rd view (not the paper)
    # 'previous': that view is the previous frame's pair pseudo-label; 'recursive': its temporal one
    # (itself including the frame before: an average along the flow whose weight falls by 1/(views+1) a frame)
    temporal_pl_mode: str = "previous"
    # both optimisers use Adam's default betas (0.9, 0.999), as dplot.py

    def validate(self) -> None:
        super().validate()
        _check(self.no_bs_params in ("all", "norm"), "no_bs_params must be 'all' or 'norm'")
        _check(self.temporal_pl_mode in ("previous", "recursive"), "temporal_pl_mode must be 'previous' or 'recursive'")
        _check(self.lr_entropy >= 0 and self.lr_consistency >= 0, "learning rates must be >= 0")
        _check(0 <= self.ema <= 1, "ema must be in [0, 1]")
        _check(self.blocks is None or len(self.blocks) > 0, "blocks must be None or non-empty")


@register_method("dplot")
class DPLOT(TTAMethod):
    Config = DPLOTConfig
    PREDICTORS = ("model", "teacher")
    RESOURCES = ("bundle",)

    def setup(self, bundle: Bundle | str | None = None) -> None:
        c = self.cfg
        b = apply_bundle(self.model, bundle)
        set_bn_mode(self.model, "batch_ema", c.bn_momentum)
        self.model.requires_grad_(True)  # dplot.py: the consistency step trains every parameter
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        if b is not None and b.teacher_state is not None:
            self.teacher.load_state_dict(b.teacher_state)
        self.modules["teacher"] = self.teacher

        blocks = c.blocks if c.blocks is not None else (tuple(b.selected_blocks) if b is not None else None)
        if c.block_selection:
            if not blocks:
                raise ValueError("dplot needs the selected blocks: pass bundle=<phase-A bundle> or blocks=[...] "
                                 "(or block_selection=False for the ablation)")
            ent_named = named_params_of_blocks(self.model, blocks)
        elif c.no_bs_params == "norm":
            ent_named = named_norm_params(self.model)
        else:
            ent_named = list(self.model.named_parameters())
        self.blocks = tuple(blocks) if (c.block_selection and blocks) else ()
        self.entropy_param_names = [n for n, _ in ent_named]
        self._ent_params = [p for _, p in ent_named]
        self._all_params = list(self.model.parameters())
        if not self._ent_params:
            raise ValueError("dplot: the entropy step has no parameters")
        self.optimizers["entropy"] = torch.optim.Adam(self._ent_params, lr=c.lr_entropy)
        self.optimizers["consistency"] = torch.optim.Adam(self._all_params, lr=c.lr_consistency)
        self.uses_motion = bool(c.temporal_pl) and self.task == "seg"
        self._motion_ctx: tuple[list[int], list[Any]] | None = None
        self._prev_pseudo: dict[int, torch.Tensor] = {}
        self._stats.update(temporal_frames=0, temporal_pixel_fraction=float("nan"))
        self._stats.update(blocks=list(self.blocks), warmed_up=bool(b is not None and b.teacher_state is not None),
                           last_entropy_loss=float("nan"), last_consistency_loss=float("nan"))

    # ----------------------------------------------------------------- views
    def _back(self, y: torch.Tensor) -> torch.Tensor:
        """Map the flipped view's output back to the input frame (segmentation only)."""
        return hflip(y) if self.task == "seg" else y

    def _views(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, hflip(x)], 0) if self.cfg.paired_views else x

    def _pair(self, z: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.cfg.paired_views:
            return z, None
        return z[:b], self._back(z[b:])

    # ----------------------------------------------------------------- prediction
    def inference_modules(self):
        return {"model": self.model, "teacher": self.teacher}

    def predict_with(self, modules, x):
        b = x.shape[0]
        v = self._views(x)
        s0, s1 = self._pair(modules["model"](v), b)
        t0, t1 = self._pair(modules["teacher"](v), b)
        out = s0 + t0
        return out if s1 is None else out + s1 + t1

    @torch.no_grad()
    def predict_parts(self, modules, x) -> dict[str, torch.Tensor]:
        """The student's and the teacher's halves of ``predict_with`` (their sum)."""
        b = x.shape[0]
        v = self._views(x)
        return self._parts(*self._pair(modules["model"](v), b), *self._pair(modules["teacher"](v), b))

    @staticmethod
    def _parts(s0, s1, t0, t1) -> dict[str, torch.Tensor]:
        return {"student": (s0 if s1 is None else s0 + s1).detach(),
                "teacher": (t0 if t1 is None else t0 + t1).detach()}

    # ----------------------------------------------------------------- adaptation
    def compute_gradients(self, x: torch.Tensor) -> dict[str, Any]:
        """Forward the views and return both losses' gradients at the current parameters (plus the
        prediction), without touching any parameter."""
        b = x.shape[0]
        v = self._views(x)
        with torch.no_grad():
            t0, t1 = self._pair(self.teacher(v), b)
            pseudo = t0 if t1 is None else (t0 + t1) / 2
            pseudo = self.with_previous_frame(pseudo, 1 if t1 is None else 2)
            q, log_q = pseudo.softmax(1), pseudo.log_softmax(1)  # the target of both views, once
            if t1 is not None:  # the target in each view's own frame, so no gradient map is flipped
                q, log_q = torch.cat([q, self._back(q)], 0), torch.cat([log_q, self._back(log_q)], 0)
        with torch.enable_grad():
            z = self.model(v)
            ent, sce = entropy_and_symmetric_cross_entropy(z, q, log_q)   # per view, per pixel
            l_ent = ent.mean()
            # SCE(z[:B], pseudo) + SCE(back(z[B:]), pseudo): the second view's loss map flipped back
            # before its mean, so the value is the same sum in the same order as on the flipped logits
            l_pc = sce.mean() if t1 is None else sce[:b].mean() + self._back(sce[b:]).mean()
        with torch.no_grad():
            s0, s1 = self._pair(z.detach(), b)
            pred = s0 + t0 if s1 is None else s0 + s1 + t0 + t1
            out = {"pred": pred, "parts": self._parts(s0, s1, t0, t1), "l_ent": l_ent.detach(),
                   "l_pc": l_pc.detach(), "g_ent": None, "g_pc": None}
        if not self._loss_ok(l_ent, l_pc):
            return out
        with torch.enable_grad():
            out["g_ent"] = torch.autograd.grad(l_ent, self._ent_params, retain_graph=True, allow_unused=True)
            out["g_pc"] = torch.autograd.grad(l_pc, self._all_params, allow_unused=True)
        return out

    # ----------------------------------------------------------------- video
    def set_motion(self, serials, motions) -> None:
        self._motion_ctx = (list(serials), list(motions))

    def reset(self, count: bool = True) -> None:
        super().reset(count)
        self._prev_pseudo = {}
        self._motion_ctx = None

    @torch.no_grad()
    def with_previous_frame(self, pseudo: torch.Tensor, views: int) -> torch.Tensor:
        """``temporal_pl``: each frame's pseudo-label (the average of ``views`` teacher views) with the
        previous frame's, warped, as one more view where the flow is valid (see the module doc)."""
        ctx, self._motion_ctx = self._motion_ctx, None
        if not self.uses_motion or ctx is None or len(ctx[0]) != pseudo.shape[0]:
            return pseudo
        serials, motions = ctx
        recursive = self.cfg.temporal_pl_mode == "recursive"
        known = self._prev_pseudo
        out, used, total = pseudo.clone(), 0, 0
        for i, (s, m) in enumerate(zip(serials, motions)):
            total += pseudo[i, 0].numel()
            prev = (out if recursive else pseudo)[i - 1] if i > 0 and serials[i - 1] == s - 1 else known.get(s - 1)
            if m is None or prev is None:
                continue
            warped, valid = warp(prev, m)
            out[i] = torch.where(valid[None], (views * pseudo[i] + warped) / (views + 1), pseudo[i])
            used += int(valid.sum())
            self._stats["temporal_frames"] += 1
        self._prev_pseudo = {s: (out if recursive else pseudo)[i].detach() for i, s in enumerate(serials)}
        self._stats["temporal_pixel_fraction"] = used / total if total else float("nan")
        return out

    def _apply(self, name: str, params: list[torch.nn.Parameter], grads) -> None:
        opt = self.optimizers[name]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        opt.zero_grad(set_to_none=True)

    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        r = self.compute_gradients(x)
        self.last_parts = r["parts"]
        self._stats["last_entropy_loss"] = float(r["l_ent"])
        self._stats["last_consistency_loss"] = float(r["l_pc"])
        if r["g_ent"] is None:  # non-finite loss: skipped, last good state restored
            return r["pred"]
        self._apply("entropy", self._ent_params, r["g_ent"])       # step 1: selected blocks
        self._apply("consistency", self._all_params, r["g_pc"])    # step 2: all parameters
        ema_update(self.teacher, self.model, self.cfg.ema)
        self._commit()
        return r["pred"]
