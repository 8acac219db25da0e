"""DPLOT phase A in one call (what ``tta-perception prepare`` runs): block selection on the source
model, source prototypes (for RMT), the mean-teacher warm-up, all in a :class:`Bundle`."""
from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import nn

from ..models.base import check_model
from .block_selection import (LR, MAX_BATCHES, NOISE_STD, PROTO_MAX_BATCHES, THRESHOLD, compute_prototypes,
                              select_blocks)
from .bundle import Bundle
from .warmup import EMA, NUM_SAMPLES, warmup_mean_teacher


def prepare_bundle(model: nn.Module, source_batches: Iterable[Any], *, model_name: str = "",
                   threshold: float = THRESHOLD, selection_lr: float = LR, noise_std: float = NOISE_STD,
                   clip: bool = False, max_batches: int | None = MAX_BATCHES,
                   proto_max_batches: int | None = PROTO_MAX_BATCHES, warmup_samples: int = NUM_SAMPLES,
                   warmup_lr: float = 1e-3, warmup_ema: float = EMA, seed: int = 0,
                   progress: bool = False, metadata: dict[str, Any] | None = None) -> Bundle:
    """Run phase A on a copy of ``model`` (the argument is left untouched)."""
    check_model(model)
    torch.manual_seed(seed)
    sel = select_blocks(model, source_batches, threshold=threshold, lr=selection_lr, noise_std=noise_std,
                        clip=clip, max_batches=max_batches, proto_max_batches=proto_max_batches, seed=seed,
                        progress=progress)
    src = copy.deepcopy(model)
    protos = compute_prototypes(src, source_batches, int(model.num_classes), proto_max_batches)
    student = copy.deepcopy(model)
    wu = warmup_mean_teacher(student, source_batches, num_samples=warmup_samples, lr=warmup_lr,
                             ema=warmup_ema, progress=progress)
    meta = {
        "model": model_name or type(model).__name__, "task": model.task, "num_classes": int(model.num_classes),
        "candidate_blocks": list(model.candidate_blocks), "selection": sel.settings,
        "warmup": {"steps": wu.steps, "samples": warmup_samples, "lr": warmup_lr, "ema": warmup_ema,
                   "final_loss": wu.losses[-1] if wu.losses else None},
        "seed": seed,
    }
    meta.update(metadata or {})
    return Bundle(selected_blocks=sel.selected, scores=sel.scores, scaled_scores=sel.scaled_scores,
                  student_state={k: v.detach().cpu().clone() for k, v in student.state_dict().items()},
                  teacher_state={k: v.detach().cpu().clone() for k, v in wu.teacher.state_dict().items()},
                  prototypes=protos, metadata=meta)
