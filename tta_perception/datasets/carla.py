"""CarlaTTA (GTTA, Marsden et al.): driving sequences rendered in CARLA, 14 segmentation classes.

Layout of the public zips (and of the reference framework's list files, whose lines are relative to the
data root): ``<sequence dir>/<town>/<run>/<weather>/camera/<frame>.png`` with the label at the same
path under ``segmentation/`` instead of ``camera/``; the class is the CARLA semantic tag in the label
PNG's red channel, mapped to the 14 train ids (other tags -> 255, ignored).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import _files
from ._files import DatasetError
from .classes import CARLA_CLASSES, CARLA_TAG_TO_TRAIN_ID
from .stream import IGNORE_INDEX, Domain

# GTTA's sequence names -> the reference framework's list name (= folder name for the test sequences)
SEQUENCES = {
    "day2night": "day_night_1200",
    "clear2fog": "clear_fog_1200",
    "clear2rain": "clear_rain_1200",
    "dynamic": "dynamic_1200",
    "dynamic-slow": "dynamic_4800",
    "highway": "town04_dynamic_1200",
    "clear": "clear_train",  # the source domain
}
# list name -> folder its paths start with, where the two differ
_LIST_DIRS = {"clear_train": "clear", "clear_test": "clear", "clear_highway_train": "clear_highway",
              "clear_highway_test": "clear_highway"}
TEST_SIZE = 1024  # the reference resizes the shorter side to 1024 px (cfg.TEST.IMG_SIZE)

_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _tag, _train_id in CARLA_TAG_TO_TRAIN_ID.items():
    _LUT[_tag] = _train_id


def label_path(image_path: Path) -> Path:
    """``.../camera/x.png`` -> ``.../segmentation/x.png`` (the last ``camera`` folder only)."""
    parts = list(Path(image_path).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "camera":
            parts[i] = "segmentation"
            return Path(*parts)
    raise DatasetError(f"{image_path}: CarlaTTA images live in a 'camera' folder; cannot locate its label")


def tags_to_train_ids(red: np.ndarray) -> np.ndarray:
    return _LUT[red]


class CarlaDomain(Domain):
    """One CarlaTTA sequence, frames in temporal order; labels (H, W) int64, 255 = ignore."""

    targets = None

    def __init__(self, name: str, frames: Sequence[Path], image_size=TEST_SIZE):
        self.name, self.frames, self.image_size = name, [Path(f) for f in frames], image_size

    def __len__(self) -> int:
        return len(self.frames)

    def load_one(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        img = _files.open_image(path)
        lab_path = label_path(path)
        lab = _files.open_image(lab_path, mode="RGB")
        if lab.size != img.size:
            raise DatasetError(f"{lab_path}: label size {lab.size} differs from its image's {img.size}")
        img = _files.resize_image(img, self.image_size)
        lab = _files.resize_image(lab, self.image_size, label=True)
        red = np.asarray(lab, dtype=np.uint8)[:, :, 0]
        return _files.image_to_tensor(img), torch.from_numpy(tags_to_train_ids(red).astype(np.int64))

    def get_batch(self, indices):
        pairs = [self.load_one(self.frames[i]) for i in indices]
        paths = [self.frames[i] for i in indices]
        return _files.stack_images([p[0] for p in pairs], paths), torch.stack([p[1] for p in pairs])


def carla_frames(root, *, sequence: Optional[str] = None, list_file=None) -> tuple[str, list[Path], str]:
    """Frame paths of a sequence: from a list file, else ``<root>/<list name>.txt``, else a sorted scan.

    The reference lists are sorted paths, so the scan yields the same order when no list is given.
    """
    root = _files.require_dir(root, "CarlaTTA data root")
    if list_file is not None:
        list_file = Path(list_file)
        name = sequence or list_file.stem
    elif sequence is not None:
        list_name = SEQUENCES.get(sequence, sequence)
        name = sequence
        candidate = root / f"{list_name}.txt"
        list_file = candidate if candidate.is_file() else None
    else:
        name, list_name = root.name, None
    if list_file is not None:
        rel = _files.read_list_file(list_file)
        frames = [root / r for r in rel]
        if not frames:
            raise DatasetError(f"{list_file}: empty list")
        if not frames[0].is_file():
            raise FileNotFoundError(f"CarlaTTA: {frames[0]} (first entry of {list_file}) not found under {root}")
        return name, frames, str(list_file)
    scan_root = root
    if list_name is not None:
        scan_root = root / _LIST_DIRS.get(list_name, list_name)
        if not scan_root.is_dir():
            known = ", ".join(f"{k} ({v})" for k, v in SEQUENCES.items())
            raise FileNotFoundError(f"CarlaTTA sequence {sequence!r}: neither {root / (list_name + '.txt')} "
                                    f"nor the folder {scan_root} exists (sequences: {known})")
    frames = sorted((p for p in scan_root.rglob("*.png") if p.parent.name == "camera"),
                    key=lambda p: p.relative_to(root).as_posix())
    if not frames:
        raise FileNotFoundError(f"CarlaTTA: no camera/*.png frames under {scan_root}")
    return name, frames, f"scan of {scan_root}"


def carla_domain(root, *, sequence=None, list_file=None, image_size=TEST_SIZE):
    name, frames, source = carla_frames(root, sequence=sequence, list_file=list_file)
    info = {"root": str(root), "frames": len(frames), "frame_list": source, "image_size": image_size}
    return CarlaDomain(name, frames, image_size), info


NUM_CLASSES = len(CARLA_CLASSES)
