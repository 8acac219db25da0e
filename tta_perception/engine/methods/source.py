"""``source``: the unadapted model (BN with its source running statistics)."""
from __future__ import annotations

import torch

from ..base import TTAMethod
from ..model_utils import set_bn_mode
from ..registry import register_method


@register_method("source")
class Source(TTAMethod):
    ADAPTS = False
    def setup(self) -> None:
        set_bn_mode(self.model, "source")
        self.model.requires_grad_(False)

    @torch.no_grad()
    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
