"""CIFAR-10-C, CIFAR-100-C and ImageNet-C (Hendrycks & Dietterich) in their public layouts.

CIFAR-x-C: ``<root>/<corruption>.npy`` uint8 (5·n, 32, 32, 3) holding severities 1..5 in order, n
images each (n = 10,000 in the public files), and ``<root>/labels.npy`` (5·n or n labels; the public
file repeats the 10,000 test labels for every severity).
ImageNet-C: ``<root>/<corruption>/<severity>/<wnid>/*.JPEG``, 224×224, label = index of the wnid in
sorted order (the order of torchvision's ImageNet weights).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import _files
from ._files import DatasetError
from .stream import Domain, check_labels

log = logging.getLogger(__name__)

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)

# Name of the folder the public archives extract to, so either it or its parent can be the root.
ARCHIVE_DIRS = {"cifar10_c": "CIFAR-10-C", "cifar100_c": "CIFAR-100-C", "imagenet_c": "ImageNet-C"}

# RobustBench's fixed 5,000-image ImageNet-C list, which the reference framework uses by default.
IMAGENET_C_SUBSET_FILE = "imagenet_test_image_ids.txt"


def check_corruptions(corruptions: Optional[Sequence[str]]) -> tuple[str, ...]:
    corruptions = CORRUPTIONS if corruptions is None else tuple(corruptions)
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruption(s) {unknown}; known: {', '.join(CORRUPTIONS)}")
    if not corruptions:
        raise ValueError("no corruptions selected")
    return corruptions


def check_severities(severity) -> tuple[int, ...]:
    sevs = (severity,) if isinstance(severity, (int, np.integer)) else tuple(severity)
    bad = [s for s in sevs if s not in SEVERITIES]
    if bad or not sevs:
        raise ValueError(f"severity must be in 1..5, got {severity!r}")
    return tuple(int(s) for s in sevs)


def domain_name(corruption: str, severity: int, multi: bool) -> str:
    """The corruption name; with several severities in one stream, ``<corruption>_<severity>``."""
    return f"{corruption}_{severity}" if multi else corruption


def resolve_root(root, dataset: str, probe: str) -> Path:
    """``root`` itself, or ``root/<archive folder>`` when the user points at the parent."""
    root = _files.require_dir(root, f"{dataset} data root")
    if (root / probe).exists():
        return root
    nested = root / ARCHIVE_DIRS[dataset]
    if (nested / probe).exists():
        return nested
    return root


# ------------------------------------------------------------------------------------------ CIFAR-C
class CifarCFiles:
    """Validated handle on a CIFAR-10-C / CIFAR-100-C folder; each corruption is read when needed."""

    def __init__(self, root, dataset: str, corruptions: Sequence[str], num_classes: int):
        self.dataset = dataset
        self.root = resolve_root(root, dataset, "labels.npy")
        self.num_classes = num_classes
        paths = [self.root / f"{c}.npy" for c in corruptions] + [self.root / "labels.npy"]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{dataset}: missing file(s) under {self.root}: {', '.join(missing)}")
        self.n_per_severity = None
        for c in corruptions:  # header check of every file up front: fail before hours of adaptation
            path = self.root / f"{c}.npy"
            shape, dtype = _files.npy_header(path)
            if len(shape) != 4 or shape[1:] != (32, 32, 3) or dtype != np.uint8 or shape[0] % 5:
                raise DatasetError(f"{path}: expected uint8 (5*n, 32, 32, 3) with severities 1..5 stacked, "
                                   f"found {dtype} {shape}")
            n = shape[0] // 5
            if self.n_per_severity not in (None, n):
                raise DatasetError(f"{path}: {n} images per severity, other files have {self.n_per_severity}")
            self.n_per_severity = n
        labels_path = self.root / "labels.npy"
        labels = check_labels(_files.load_npy(labels_path), num_classes, labels_path)
        n = self.n_per_severity
        if len(labels) not in (n, 5 * n):
            raise DatasetError(f"{labels_path}: {len(labels)} labels, expected {n} or {5 * n} "
                               f"to match {n} images per severity")
        self.labels = labels

    def load(self, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
        """Images (n, 32, 32, 3) uint8 and labels (n,) of one corruption at one severity."""
        path = self.root / f"{corruption}.npy"
        n = self.n_per_severity
        lo, hi = (severity - 1) * n, severity * n
        array = _files.load_npy(path, mmap=True)
        try:
            images = np.ascontiguousarray(array[lo:hi])
        except (OSError, ValueError) as err:  # the file changed since the header check
            raise DatasetError(f"{path}: cannot read severity {severity} ({err})") from err
        labels = self.labels[lo:hi] if len(self.labels) == 5 * n else self.labels
        return images, labels


class CifarCDomain(Domain):
    """One (corruption, severity) of CIFAR-x-C; the 30 MB slice is read on first use and kept."""

    def __init__(self, files: CifarCFiles, corruption: str, severity: int, name: str):
        self.files, self.corruption, self.severity, self.name = files, corruption, severity, name
        self._images: Optional[np.ndarray] = None
        lo = (severity - 1) * files.n_per_severity
        labels = files.labels
        self.targets = labels[lo:lo + files.n_per_severity] if len(labels) > files.n_per_severity else labels

    def __len__(self) -> int:
        return self.files.n_per_severity

    def get_batch(self, indices):
        if self._images is None:
            self._images, _ = self.files.load(self.corruption, self.severity)
        idx = np.asarray(indices, dtype=np.int64)
        x = torch.from_numpy(self._images[idx]).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        y = torch.from_numpy(self.targets[idx].copy())
        return x, y

    def release(self) -> None:
        self._images = None


def cifar_c_domains(root, dataset: str, *, severity=5, corruptions=None, num_classes: int):
    corruptions = check_corruptions(corruptions)
    sevs = check_severities(severity)
    files = CifarCFiles(root, dataset, corruptions, num_classes)
    return files, [CifarCDomain(files, c, s, domain_name(c, s, len(sevs) > 1))
                   for c in corruptions for s in sevs]


# ---------------------------------------------------------------------------------------- ImageNet-C
class ImageFileDomain(Domain):
    """Labelled image files of one domain; decoded (and resized if asked) batch by batch."""

    def __init__(self, name: str, samples: Sequence[tuple[Path, int]], *, resize=None, crop=None):
        self.name = name
        self.paths = [Path(p) for p, _ in samples]
        self.targets = np.asarray([t for _, t in samples], dtype=np.int64)
        self.resize, self.crop = resize, crop

    def __len__(self) -> int:
        return len(self.paths)

    def load_one(self, path: Path) -> torch.Tensor:
        img = _files.open_image(path)
        if self.crop is not None and img.size != (self.crop, self.crop):
            img = _files.center_crop(_files.resize_image(img, self.resize), self.crop)
        elif self.crop is None:
            img = _files.resize_image(img, self.resize)
        return _files.image_to_tensor(img)

    def get_batch(self, indices):
        paths = [self.paths[i] for i in indices]
        x = _files.stack_images([self.load_one(p) for p in paths], paths)
        return x, torch.from_numpy(self.targets[list(indices)])


def _wnid_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir())


def imagenet_c_domains(root, *, severity=5, corruptions=None, subset_file=None, num_samples=None):
    """One domain per (corruption, severity), all with the same image list.

    Image list: ``subset_file`` (lines ``<wnid>/<file>``, e.g. RobustBench's
    ``imagenet_test_image_ids.txt``, which the reference framework uses: 5,000 fixed images per
    corruption); else ``<root>/imagenet_test_image_ids.txt`` if present and ``num_samples`` is not
    set; else every image under the folder, sorted by ``<wnid>/<file>``. The reference's NUM_EX
    subsets are drawn from its own 50k id list (``imagenet_val_ids_50k.txt``): pass that list as
    ``subset_file`` with ``num_samples`` to draw the identical images.
    """
    corruptions = check_corruptions(corruptions)
    sevs = check_severities(severity)
    root = resolve_root(root, "imagenet_c", corruptions[0])
    first = root / corruptions[0] / str(sevs[0])
    _files.require_dir(first, "ImageNet-C corruption folder (<root>/<corruption>/<severity>)")
    wnids = _wnid_dirs(first)
    if not wnids:
        raise DatasetError(f"{first}: no class (wnid) folders")
    if len(wnids) != 1000:
        log.warning("ImageNet-C: %d class folders in %s (expected 1000); labels are indices among the "
                    "folders found, which only match a 1000-class model if all classes are present",
                    len(wnids), first)
    class_to_idx = {w: i for i, w in enumerate(wnids)}
    if subset_file is None and num_samples is None and (root / IMAGENET_C_SUBSET_FILE).is_file():
        subset_file = root / IMAGENET_C_SUBSET_FILE
    if subset_file is not None:
        rel = _files.read_list_file(Path(subset_file))
        bad = [r for r in rel if r.split("/")[0] not in class_to_idx]
        if bad:
            raise DatasetError(f"{subset_file}: {len(bad)} entries name classes not under {first} "
                               f"(e.g. {bad[0]!r}); lines must read <wnid>/<file>")
    else:
        rel = [f"{w}/{p.name}" for w in wnids for p in _files.list_images(first / w)]
    if not rel:
        raise DatasetError(f"{first}: no images")
    domains = []
    for c in corruptions:
        for s in sevs:
            folder = root / c / str(s)
            _files.require_dir(folder, f"ImageNet-C folder for {c} severity {s}")
            samples = [(folder / r, class_to_idx[r.split("/")[0]]) for r in rel]
            for probe in {rel[0], rel[-1]}:  # cheap spot check; every file is checked when decoded
                if not (folder / probe).is_file():
                    raise FileNotFoundError(f"ImageNet-C: {folder / probe} not found (image lists differ "
                                            "between corruptions, or the list file does not match the data)")
            domains.append(ImageFileDomain(domain_name(c, s, len(sevs) > 1), samples,
                                           resize=256, crop=224))
    info = {"root": str(root), "image_list": str(subset_file) if subset_file else "all images (sorted)",
            "images_per_domain": len(rel), "classes_found": len(wnids)}
    return domains, info
