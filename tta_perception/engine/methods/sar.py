"""``sar``: sharpness-aware, reliable entropy minimisation with model recovery (Niu et al., ICLR
2023), as the reference framework's ``methods/sar.py`` (SAM over SGD, entropy filter, reset when the
EMA of the second-pass loss drops below ``reset_constant``). Pixels are samples for segmentation."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..base import TTAMethod
from ..config import _check
from ..losses import softmax_entropy
from ..model_utils import freeze_all_but, named_norm_params, set_bn_mode
from ..registry import register_method
from .common import EntropyMethodConfig, adapted_params


@dataclass
class SARConfig(EntropyMethodConfig):
    # sar.py setup_optimizer: SAM(params, SGD, lr=OPTIM.LR, momentum=OPTIM.MOMENTUM); the cifar cfgs
    # set LR 1e-3 (their Adam METHOD is ignored by SAR), ImageNet-C 2.5e-4.
    optimizer: str = "sgd"
    lr: float = 1e-3
    rho: float = 0.05             # SAM default rho (davda54/sam, used by sar.py)
    e_margin: float = 0.4         # conf.py EATA.MARGIN_E0 (SAR reuses it), times ln(C)
    reset_constant: float = 0.2   # conf.py SAR.RESET_CONSTANT_EM
    loss_ema: float = 0.9         # sar.py update_ema alpha
    # sar.py collect_params skips the top layers: ResNet layer4, ViT blocks 9-11 and the final norm
    exclude: tuple[str, ...] = ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")

    def validate(self) -> None:
        super().validate()
        _check(self.rho >= 0, "rho must be >= 0")
        _check(self.e_margin > 0 and self.reset_constant >= 0, "e_margin > 0, reset_constant >= 0")
        _check(0 <= self.loss_ema < 1, "loss_ema must be in [0, 1)")


@register_method("sar")
class SAR(TTAMethod):
    Config = SARConfig

    def setup(self) -> None:
        c = self.cfg
        set_bn_mode(self.model, "batch_ema", c.bn_momentum)
        if c.blocks:
            self._params = adapted_params(self.model, c.blocks)
        else:  # sar.py also skips a top-level module named 'norm' (ViT's final norm)
            self._params = [p for n, p in named_norm_params(self.model, c.exclude)
                            if n.rsplit(".", 1)[0] != "norm"]
            freeze_all_but(self.model, self._params)
        # sar.py: SGD momentum, no nesterov
        self.optimizers["opt"] = self._make_optimizer(self._params, c.optimizer, c.lr, c.beta, c.momentum,
                                                      c.weight_decay, nesterov=False)
        self.margin = c.e_margin * math.log(self.num_classes)
        self.loss_avg: float | None = None

    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        opt = self.optimizers["opt"]
        with torch.enable_grad():
            out = self.model(x)
            ent = softmax_entropy(out).reshape(-1)
            keep1 = ent < self.margin
            if not bool(keep1.any()):
                self._stats["filtered_steps"] += 1
                return out.detach()
            loss = ent[keep1].mean()
            if not self._loss_ok(loss):
                return out.detach()
            grads = torch.autograd.grad(loss, self._params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self._params, grads)]
            # SAM first step: climb to w + rho * g / ||g||
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            scale = self.cfg.rho / (norm + 1e-12)
            old = [p.detach().clone() for p in self._params]
            with torch.no_grad():
                for p, g in zip(self._params, grads):
                    p.add_(g * scale)
            ent2 = softmax_entropy(self.model(x)).reshape(-1)[keep1]
            keep2 = ent2 < self.margin
            loss2 = ent2[keep2].mean() if bool(keep2.any()) else None
            if loss2 is None or not bool(torch.isfinite(loss2)):
                with torch.no_grad():
                    for p, o in zip(self._params, old):
                        p.copy_(o)
                if loss2 is None:
                    self._stats["filtered_steps"] += 1
                else:
                    self._on_nonfinite()
                return out.detach()
            l2 = float(loss2.detach())
            self.loss_avg = l2 if self.loss_avg is None else \
                self.cfg.loss_ema * self.loss_avg + (1 - self.cfg.loss_ema) * l2
            loss2.backward()
            with torch.no_grad():  # back to w, then the base step with the gradient at w + e(w)
                for p, o in zip(self._params, old):
                    p.copy_(o)
            opt.step()
            opt.zero_grad(set_to_none=True)
            self._stats["last_loss"] = l2
            if self._commit() and self.loss_avg is not None and self.loss_avg < self.cfg.reset_constant:
                self._method_reset()  # SAR model recovery
        return out.detach()

    def _extra_state(self) -> dict[str, Any]:
        return {"loss_avg": self.loss_avg}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.loss_avg = state.get("loss_avg")
