"""``norm``: BN test statistics (reference framework ``bntest``, Schneider et al. 2020).

BN normalises with the statistics of the current test batch; no gradient step. The running buffers
become an EMA of test statistics (``bn_momentum``), used only for streaming single-frame prediction.
"""
from __future__ import annotations

import torch

from ..base import TTAMethod
from ..model_utils import set_bn_mode
from ..registry import register_method


@register_method("norm")
class Norm(TTAMethod):
    def setup(self) -> None:
        set_bn_mode(self.model, "batch_ema", self.cfg.bn_momentum)
        self.model.requires_grad_(False)

    @torch.no_grad()
    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self._commit()  # the BN EMA is this method's only state: guard it against NaN inputs
        return out
