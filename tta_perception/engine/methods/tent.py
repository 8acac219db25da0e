"""``tent``: entropy minimisation of the norm layers' affine parameters (Wang et al., ICLR 2021),
as in the reference framework's ``methods/tent.py``; ``blocks=`` gives the paper's Tent+BS."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import TTAMethod
from ..losses import softmax_entropy
from ..model_utils import set_bn_mode
from ..registry import register_method
from .common import EntropyMethodConfig, adapted_params


@dataclass
class TentConfig(EntropyMethodConfig):
    """All defaults from cfgs/cifar10_c/tent.yaml (Adam 1e-3, beta 0.9, batch statistics)."""


@register_method("tent")
class Tent(TTAMethod):
    Config = TentConfig

    def setup(self) -> None:
        c = self.cfg
        set_bn_mode(self.model, "batch_ema", c.bn_momentum)
        params = adapted_params(self.model, c.blocks)
        self.optimizers["opt"] = self._make_optimizer(params, c.optimizer, c.lr, c.beta, c.momentum, c.weight_decay)

    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        opt = self.optimizers["opt"]
        with torch.enable_grad():
            out = self.model(x)
            loss = softmax_entropy(out).mean()  # per sample / per pixel, then mean
            if self._minimise(loss, opt):
                self._commit()
        return out.detach()
