"""Run a model (optionally under an adaptation method) over a world sequence and score it per domain
(``metrics.DomainScores``, the scoring every command shares)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from .metrics import ConfusionMatrix, DomainScores
from .runtime.preprocess import to_tensor
from .world.sequences import DEFAULT_SIZE, Frame, iter_sequence


@dataclass
class SequenceResult:
    name: str
    scores: DomainScores
    frame_index: list[int] = field(default_factory=list)
    frame_miou: list[float] = field(default_factory=list)   # per-frame mIoU (for plots)
    frame_domain: list[str] = field(default_factory=list)
    frame_weather: list[dict] = field(default_factory=list)

    @property
    def domains(self) -> "dict[str, ConfusionMatrix]":
        return self.scores.per_domain

    @property
    def total(self) -> ConfusionMatrix:
        return self.scores.total

    def table(self) -> "OrderedDict[str, float]":
        out = OrderedDict((d, cm.miou()) for d, cm in self.domains.items())
        out["all"] = self.total.miou()
        return out


def evaluate_frames(frames: Iterable[Frame], predict: Callable[[torch.Tensor], torch.Tensor], num_classes: int,
                    name: str = "sequence", batch_size: int = 1, progress: bool = True,
                    total: int | None = None) -> SequenceResult:
    """``predict(x)`` gets (B, 3, H, W) in [0, 1] and returns logits; frames are scored as they come."""
    res = SequenceResult(name, DomainScores(num_classes))
    pending: list[Frame] = []

    def flush():
        x = to_tensor(np.stack([f.rgb for f in pending]))
        pred = predict(x).argmax(1).cpu().numpy()
        for f, p in zip(pending, pred):
            frame = res.scores.add_frame(p, f.labels, f.domain)
            res.frame_index.append(f.index)
            res.frame_miou.append(frame.miou())
            res.frame_domain.append(f.domain)
            res.frame_weather.append(f.weather.as_dict())
        pending.clear()

    for f in tqdm(frames, desc=name, total=total, disable=not progress, unit="frame"):
        pending.append(f)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return res


def source_predictor(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    device = next(model.parameters()).device

    @torch.no_grad()
    def predict(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device))

    model.eval()
    return predict


def evaluate_sequence(model: torch.nn.Module, sequence: str, stride: int = 1, frames: int | None = None,
                      seed: int | None = None, size=DEFAULT_SIZE, workers: int = 2, progress: bool = True,
                      predict: Callable | None = None, batch_size: int = 8) -> SequenceResult:
    """Source-model (or ``predict``) mIoU per domain over a rendered sequence."""
    from .world.schedule import load_schedule

    sched = load_schedule(sequence)
    stop = frames if frames is not None else sched.frames
    it = iter_sequence(sched, seed=seed, size=size, stop=stop, stride=stride, workers=workers)
    n = len(range(0, stop, stride))
    return evaluate_frames(it, predict or source_predictor(model), model.num_classes, name=sched.name,
                           batch_size=batch_size, progress=progress, total=n)
