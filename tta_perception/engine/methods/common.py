"""Pieces shared by the entropy-minimisation baselines (Tent, EATA, SAR)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import MethodConfig, _check, check_optimizer
from ..model_utils import freeze_all_but, named_norm_params, named_params_of_blocks


@dataclass
class EntropyMethodConfig(MethodConfig):
    # Optimiser: cfgs/cifar10_c/{tent,eata,sar}.yaml use Adam, LR 1e-3, BETA 0.9, WD 0
    # (ImageNet-C cfgs: SGD, LR 2.5e-4, momentum 0.9).
    optimizer: str = "adam"
    lr: float = 1e-3
    beta: float = 0.9       # Adam beta1 (conf.py OPTIM.BETA)
    momentum: float = 0.9   # SGD momentum (conf.py OPTIM.MOMENTUM)
    weight_decay: float = 0.0
    # DPLOT paper ablation ("+BS"): adapt all parameters of these blocks instead of the norm layers.
    blocks: tuple[str, ...] | None = None

    def validate(self) -> None:
        super().validate()
        check_optimizer(self.optimizer)
        _check(self.lr > 0, "lr must be > 0")
        _check(0 <= self.beta < 1 and 0 <= self.momentum < 1, "beta/momentum must be in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay must be >= 0")
        _check(self.blocks is None or len(self.blocks) > 0, "blocks must be None or non-empty")


def adapted_params(model: nn.Module, blocks, exclude=()) -> list[nn.Parameter]:
    """Norm-layer affine params (the method's own choice) or, with ``blocks``, the blocks' params;
    everything else frozen."""
    if blocks:
        named = named_params_of_blocks(model, blocks)
    else:
        named = named_norm_params(model, exclude)
    params = [p for _, p in named]
    freeze_all_but(model, params)
    return params
