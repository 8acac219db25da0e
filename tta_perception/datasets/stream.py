"""Test streams: domains in protocol order, cut into batches, as the online TTA benchmarks feed them.

A stream yields ``StreamBatch(images, labels, domain)``: images (B, 3, H, W) float32 in [0, 1],
labels (B,) int64 class ids or (B, H, W) int64 maps with 255 = ignore (``None`` for unlabelled
recordings), and the name of the domain the batch was drawn from. Batches never straddle two domains,
as in the reference framework, which builds one test loader per domain.
"""
from __future__ import annotations

import random
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np
import torch

from ._files import DatasetError

SETTINGS = ("continual", "reset_each_shift", "mixed_domains", "correlated")
IGNORE_INDEX = 255


class StreamBatch(NamedTuple):
    images: torch.Tensor
    labels: Optional[torch.Tensor]
    domain: str


class Domain:
    """An ordered set of samples of one domain, decoded lazily by ``get_batch(indices)``.

    ``targets`` (class id per sample, or ``None``) lets the stream order samples by label without
    decoding images (the ``correlated`` setting).
    """

    name: str = ""
    targets: Optional[np.ndarray] = None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError  # pragma: no cover - abstract

    # lets a DataLoader with batch_size=None decode whole batches in worker processes
    def __getitem__(self, indices):
        return self.get_batch(indices)


class ConcatDomain(Domain):
    """Several domains as one (``mixed_domains``): sample i of the union keeps its source domain."""

    def __init__(self, domains: Sequence[Domain], name: str = "mixed"):
        self.domains = list(domains)
        self.name = name
        self.offsets = np.cumsum([0] + [len(d) for d in self.domains])
        targets = [d.targets for d in self.domains]
        self.targets = None if any(t is None for t in targets) else np.concatenate(targets)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get_batch(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        images: list = [None] * len(indices)
        labels: list = [None] * len(indices)
        for d in np.unique(which):
            pos = np.nonzero(which == d)[0]
            x, y = self.domains[d].get_batch((indices[pos] - self.offsets[d]).tolist())
            for j, p in enumerate(pos):
                images[p] = x[j]
                labels[p] = None if y is None else y[j]
        y = None if labels[0] is None else torch.stack(labels)
        return torch.stack(images), y


def reference_order(n: int, seed: Optional[int], num_samples: Optional[int] = None) -> list[int]:
    """Sample order of one domain, identical to the reference framework's for the same seed.

    The reference calls ``random.seed(seed)``, then ``random.shuffle(samples)`` and, with NUM_EX,
    ``random.sample(samples, k)`` on each domain's list; both depend only on the list length and the
    generator state, so shuffling indices with a fresh ``random.Random(seed)`` gives the same order.
    """
    order = list(range(n))
    rng = random.Random(seed) if seed is not None else None
    if rng is not None:
        rng.shuffle(order)
    if num_samples is not None and num_samples >= 0 and num_samples < n:
        order = rng.sample(order, k=num_samples) if rng is not None else order[:num_samples]
    return order


class Stream:
    """Iterable of ``StreamBatch`` over ``domains`` in protocol order.

    ``len(stream)`` is the number of batches; ``stream.num_samples`` the number of images;
    ``stream.info`` a dict describing exactly what is streamed (for run logs).
    """

    def __init__(self, dataset: str, domains: Sequence[Domain], *, task: str, num_classes: Optional[int],
                 class_names: Sequence[str] = (), batch_size: int, setting: str = "continual",
                 shuffle_seed: Optional[int] = 1, num_samples: Optional[int] = None, num_workers: int = 0,
                 info: Optional[dict] = None):
        if setting not in SETTINGS:
            raise ValueError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not domains:
            raise ValueError(f"{dataset}: no domains to stream")
        self.dataset = dataset
        self.task = task
        self.num_classes = num_classes
        self.class_names = tuple(class_names)
        self.batch_size = int(batch_size)
        self.setting = setting
        self.num_workers = int(num_workers)
        self.source_domains = [d.name for d in domains]
        if setting == "mixed_domains":
            domains = [ConcatDomain(domains)]
        self._plan = []
        for d in domains:
            order = reference_order(len(d), shuffle_seed, num_samples)
            if setting == "correlated":
                if d.targets is None:
                    raise ValueError(f"setting 'correlated' needs class labels; {dataset} has none per image")
                targets = d.targets
                order.sort(key=lambda i: int(targets[i]))  # stable: ties keep the shuffled order
            self._plan.append((d, order))
        self.domains = [d.name for d, _ in self._plan]
        self.info = dict(info or {})
        self.info.update(dataset=dataset, setting=setting, batch_size=self.batch_size,
                         shuffle_seed=shuffle_seed, num_samples=self.num_samples, domains=self.domains)

    @property
    def num_samples(self) -> int:
        return sum(len(o) for _, o in self._plan)

    def __len__(self) -> int:
        return sum(-(-len(o) // self.batch_size) for _, o in self._plan)

    def _chunks(self, order: list[int]) -> list[list[int]]:
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def __iter__(self) -> Iterator[StreamBatch]:
        for domain, order in self._plan:
            chunks = self._chunks(order)
            if self.num_workers > 0 and len(chunks) > 1:
                loader = torch.utils.data.DataLoader(domain, batch_size=None, sampler=chunks,
                                                     num_workers=self.num_workers,
                                                     persistent_workers=False)
                batches = iter(loader)
            else:
                batches = (domain.get_batch(c) for c in chunks)
            for x, y in batches:
                yield StreamBatch(x, y, domain.name)
            release = getattr(domain, "release", None)
            if release is not None:  # e.g. a CIFAR-C slice: keep one domain in memory, not fifteen
                release()

    def __repr__(self) -> str:
        return (f"Stream({self.dataset}, {len(self.domains)} domains, {self.num_samples} images, "
                f"batch {self.batch_size}, {self.setting})")


def check_labels(labels: np.ndarray, num_classes: int, path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}: labels outside 0..{num_classes - 1} "
                           f"(min {labels.min()}, max {labels.max()})")
    return labels.astype(np.int64)
