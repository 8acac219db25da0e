"""Per-domain scoring: one accumulator per weather phase or corruption, plus the whole stream.

Every command scores a stream the same way (``evaluate``, ``bench``, ``replay``, the evaluator node,
``node-bench``): segmentation accumulates one confusion matrix per domain and one over everything
(mIoU over the whole domain, as CarlaTTA, not a mean of per-frame values); classification counts
correct samples per domain. Domains keep the order in which they first appear.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from .confusion import Accuracy, ConfusionMatrix, as_array

TASKS = ("seg", "cls")


class DomainScores:
    """Scores per domain and in total; ``task`` 'seg' (mIoU) or 'cls' (error)."""

    def __init__(self, num_classes: int, task: str = "seg"):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task, self.num_classes = task, int(num_classes)
        self.per_domain: dict[str, Any] = {}
        self.total = self._new()
        self.frames: Counter[str] = Counter()

    def _new(self):
        return ConfusionMatrix(self.num_classes) if self.task == "seg" else Accuracy()

    def add_frame(self, pred, labels, domain: str) -> ConfusionMatrix:
        """A segmentation frame; returns its own confusion matrix (per-frame mIoU / accuracy)."""
        frame = ConfusionMatrix(self.num_classes)
        frame.update(pred, labels)
        self.per_domain.setdefault(domain, self._new()).merge(frame)
        self.total.merge(frame)
        self.frames[domain] += 1
        return frame

    def add_matrix(self, frame: ConfusionMatrix, domain: str) -> None:
        """A segmentation frame already counted elsewhere (its confusion matrix from :meth:`add_frame`
        of another score): the per-cycle scores reuse the frame's counts instead of recounting."""
        self.per_domain.setdefault(domain, self._new()).merge(frame)
        self.total.merge(frame)
        self.frames[domain] += 1

    def add_samples(self, preds, labels, domains: Sequence[str]) -> float:
        """Classified samples with their domains; returns the error % of this batch."""
        ok = as_array(preds) == as_array(labels)
        for domain, o in zip(domains, ok):
            acc = self.per_domain.setdefault(domain, self._new())
            acc.correct += int(o)
            acc.total += 1
            self.frames[domain] += 1
        self.total.correct += int(ok.sum())
        self.total.total += len(ok)
        return 100.0 * (1.0 - float(ok.mean()))

    @staticmethod
    def _percent(acc) -> float:
        """mIoU % (seg) or error % (cls) of one accumulator."""
        if isinstance(acc, ConfusionMatrix):
            return 100.0 * acc.miou()
        return 100.0 * (1 - acc.correct / acc.total) if acc.total else float("nan")

    def domains(self) -> dict[str, float]:
        """Domain -> mIoU % (seg) or error % (cls), in order of appearance."""
        return {d: self._percent(acc) for d, acc in self.per_domain.items()}

    def overall(self) -> float:
        """mIoU % over the whole stream (seg) or error % over every sample (cls)."""
        return self._percent(self.total)

    def summary(self, domain: str | None = None) -> dict[str, float]:
        """Segmentation: ``{miou, acc, frames}`` in percent of one domain (None: everything)."""
        cm = self.total if domain is None else self.per_domain[domain]
        frames = sum(self.frames.values()) if domain is None else self.frames[domain]
        return {"miou": 100.0 * cm.miou(), "acc": 100.0 * cm.accuracy(), "frames": int(frames)}

    def state_dict(self) -> dict[str, Any]:
        """Every count as plain lists and numbers (checkpoints of a long run: ``bench --stream``)."""
        return {"task": self.task, "num_classes": self.num_classes, "total": self.total.state_dict(),
                "per_domain": {d: acc.state_dict() for d, acc in self.per_domain.items()},
                "frames": dict(self.frames)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("task") != self.task or int(state.get("num_classes", -1)) != self.num_classes:
            raise ValueError(f"domain scores state is for {state.get('task')} with {state.get('num_classes')} "
                             f"classes, not {self.task} with {self.num_classes}")
        self.total = self._new()
        self.total.load_state_dict(state["total"])
        self.per_domain = {}
        for d, acc_state in state["per_domain"].items():  # in order of appearance, as saved
            self.per_domain[d] = acc = self._new()
            acc.load_state_dict(acc_state)
        self.frames = Counter({d: int(n) for d, n in state["frames"].items()})



def detector_purity(phases: Sequence[str], detected: Sequence[int]) -> dict[str, Any]:
    """How well a label-free domain detector's ids match the true weather phases, per frame:
    ``one_to_one``: the fraction of frames on the best one-to-one pairing of ids and phases
    (Hungarian assignment); ``purity``: each id counted as its majority phase; ``inverse``: each
    phase counted as its majority id (1.0 when no phase is split over several ids)."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    pairs = Counter(zip(phases, detected))
    n = sum(pairs.values())
    if not n:
        return {"one_to_one": float("nan"), "purity": float("nan"), "inverse": float("nan"), "frames": 0,
                "mapping": {}}
    ps, ids = sorted({p for p, _ in pairs}), sorted({i for _, i in pairs})
    table = np.array([[pairs[(p, i)] for i in ids] for p in ps])
    rows, cols = linear_sum_assignment(-table)
    return {"one_to_one": float(table[rows, cols].sum() / n), "purity": float(table.max(0).sum() / n),
            "inverse": float(table.max(1).sum() / n), "frames": int(n),
            "mapping": {int(ids[c]): ps[r] for r, c in zip(rows, cols)},
            "table": {p: {int(i): int(table[a, b]) for b, i in enumerate(ids) if table[a, b]} for a, p in enumerate(ps)}}
