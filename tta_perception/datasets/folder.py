"""A user's own recordings: a folder of frames (one domain) or a folder of folders (one per domain).

Frames are streamed in file-name order (the recording order of numbered frames) without labels, so
the stream can drive adaptation and the ROS nodes' offline replay alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import _files
from .stream import Domain


class FolderDomain(Domain):
    targets = None

    def __init__(self, name: str, paths: Sequence[Path], image_size=None):
        self.name, self.paths, self.image_size = name, list(paths), image_size

    def __len__(self) -> int:
        return len(self.paths)

    def get_batch(self, indices):
        paths = [self.paths[i] for i in indices]
        tensors = [_files.image_to_tensor(_files.resize_image(_files.open_image(p), self.image_size))
                   for p in paths]
        return _files.stack_images(tensors, paths), None


def folder_domains(root, *, image_size=None):
    """Images directly in ``root`` form one domain named after it; otherwise each sub-folder (sorted,
    images found recursively) is a domain, streamed in name order."""
    root = _files.require_dir(root, "image folder")
    direct = _files.list_images(root)
    if direct:
        domains = [FolderDomain(root.name, direct, image_size)]
    else:
        domains = []
        for sub in sorted(d for d in root.iterdir() if d.is_dir()):
            paths = sorted(_files.list_images(sub, recursive=True), key=lambda p: p.relative_to(sub).as_posix())
            if paths:
                domains.append(FolderDomain(sub.name, paths, image_size))
    if not domains:
        raise FileNotFoundError(f"no images ({', '.join(_files.IMAGE_EXTENSIONS)}) under {root}")
    return domains, {"root": str(root), "image_size": image_size}
