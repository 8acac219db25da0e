"""Labelled source data for DPLOT's prepare step (block selection, mean-teacher warm-up) and for
clean-accuracy checks: CIFAR-10/100 "python version" batches, an ImageNet-style train folder,
CarlaTTA's clear sequence, or any folder of class sub-folders.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import _files
from ._files import DatasetError
from .carla import CarlaDomain, carla_frames
from .classes import CARLA_CLASSES, CIFAR10_CLASSES, CIFAR100_CLASSES, imagenet_classes
from .corruptions import ImageFileDomain
from .stream import Domain, check_labels

CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


class ArrayDomain(Domain):
    """Images held in memory as uint8 (N, H, W, 3) with integer labels."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray):
        self.name, self.images, self.targets = name, images, labels

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        x = torch.from_numpy(self.images[idx]).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        return x, torch.from_numpy(self.targets[idx].copy())


def _cifar_arrays(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _files.load_array_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise DatasetError(f"{path}: not a CIFAR batch (keys {sorted(batch)}; need 'data' and {label_key!r})")
    data, labels = batch["data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path}: 'data' must be uint8 (N, 3072), found "
                           f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{path}: {label_key!r} is not a list of integers") from err
    labels = check_labels(labels, num_classes, path)
    if len(labels) != len(data):
        raise DatasetError(f"{path}: {len(data)} images but {len(labels)} labels")
    # rows are 1024 red, 1024 green, 1024 blue values of a 32x32 image, row-major
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def cifar_domain(root, dataset: str, split: str = "train") -> ArrayDomain:
    """CIFAR-10 (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``) or CIFAR-100
    (``cifar-100-python/train``, ``test``); ``root`` may be that folder or its parent."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = _files.require_dir(root, f"{dataset} data root")
    if dataset == "cifar10":
        folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
        names, key, nc = (CIFAR10_TRAIN if split == "train" else ("test_batch",)), "labels", 10
    else:
        folder = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
        names, key, nc = (split,), "fine_labels", 100
    paths = [folder / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{dataset}: missing file(s): {', '.join(missing)} (extract the "
                                f"'python version' archive under {root})")
    parts = [_cifar_arrays(p, key, nc) for p in paths]
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    return ArrayDomain(f"{dataset}_{split}", images, labels)


def class_folder_domain(root, name: str, *, resize=256, crop: Optional[int] = 224,
                        expect_classes: Optional[int] = None) -> tuple[ImageFileDomain, list[str]]:
    """``root/<class>/*.<img>`` -> labelled domain, class index = sorted folder order."""
    root = _files.require_dir(root, "class-folder root")
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
    samples = []
    for i, c in enumerate(classes):
        with os.scandir(root / c) as it:
            files = sorted(e.name for e in it if e.is_file() and
                           os.path.splitext(e.name)[1].lower() in _files.IMAGE_EXTENSIONS)
        samples += [(root / c / f, i) for f in files]
    if not samples:
        raise FileNotFoundError(f"no images in class folders under {root} (expected <class>/<image>)")
    if expect_classes is not None and len(classes) != expect_classes:
        raise DatasetError(f"{root}: {len(classes)} class folders, expected {expect_classes} "
                           "(labels are indices in sorted folder order)")
    return ImageFileDomain(name, samples, resize=resize, crop=crop), classes


class SourceLoader:
    """Labelled batches ``(images, labels)``, reshuffled every epoch (seeded, reproducible).

    ``num_samples`` fixes a random subset once, as the reference's SOURCE.NUM_SAMPLES does.
    """

    def __init__(self, domain: Domain, *, batch_size: int, shuffle: bool = True, seed: int = 1,
                 num_samples: Optional[int] = None, num_workers: int = 0, drop_last: bool = False,
                 task: str = "cls", num_classes: Optional[int] = None, class_names: Sequence[str] = (),
                 info: Optional[dict] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.domain, self.batch_size, self.shuffle, self.seed = domain, int(batch_size), shuffle, seed
        self.num_workers, self.drop_last = int(num_workers), drop_last
        self.task, self.num_classes, self.class_names = task, num_classes, tuple(class_names)
        n = len(domain)
        self.indices = list(range(n))
        if num_samples is not None and 0 <= num_samples < n:
            self.indices = sorted(random.Random(seed).sample(self.indices, k=num_samples))
        self.epoch = 0
        self.info = dict(info or {}, num_samples=len(self.indices), batch_size=self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = list(self.indices)
        if self.shuffle:
            random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        self.epoch += 1
        chunks = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and chunks and len(chunks[-1]) < self.batch_size:
            chunks.pop()
        if self.num_workers > 0 and len(chunks) > 1:
            yield from torch.utils.data.DataLoader(self.domain, batch_size=None, sampler=chunks,
                                                   num_workers=self.num_workers)
        else:
            for c in chunks:
                yield self.domain.get_batch(c)


def source_domain(dataset: str, root, *, split: str = "train", image_size=None, list_file=None):
    """(domain, task, num_classes, class_names, info) of a dataset's source (training) data."""
    key = dataset.lower().replace("-", "_")
    if key in ("cifar10", "cifar10_c"):
        return cifar_domain(root, "cifar10", split), "cls", 10, CIFAR10_CLASSES, {"root": str(root)}
    if key in ("cifar100", "cifar100_c"):
        return cifar_domain(root, "cifar100", split), "cls", 100, CIFAR100_CLASSES, {"root": str(root)}
    if key in ("imagenet", "imagenet_c"):
        root = Path(root)
        sub = "train" if split == "train" else "val"
        folder = root / sub if (root / sub).is_dir() else root
        size = image_size or 224
        domain, classes = class_folder_domain(folder, f"imagenet_{split}", resize=round(size * 256 / 224),
                                              crop=size)
        names = imagenet_classes() if len(classes) == 1000 else tuple(classes)
        return domain, "cls", len(classes), names, {"root": str(folder)}
    if key == "carlatta":
        seq = "clear" if split == "train" else "clear_test"
        name, frames, src = carla_frames(root, sequence=None if list_file else seq, list_file=list_file)
        size = image_size or 1024
        return (CarlaDomain(f"carlatta_{split}", frames, size), "seg", len(CARLA_CLASSES), CARLA_CLASSES,
                {"root": str(root), "frame_list": src})
    if key == "folder":  # image_size: ImageNet-style eval crop (shorter side 256/224 of it, centre crop)
        resize = round(image_size * 256 / 224) if isinstance(image_size, int) else image_size
        domain, classes = class_folder_domain(root, Path(root).name, resize=resize,
                                              crop=image_size if isinstance(image_size, int) else None)
        return domain, "cls", len(classes), tuple(classes), {"root": str(root)}
    raise ValueError(f"unknown source dataset {dataset!r}; choose from cifar10, cifar100, imagenet, "
                     "carlatta, folder (or their -C names)")
