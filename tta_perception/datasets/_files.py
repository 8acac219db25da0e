"""Checked readers for the public file formats: ``.npy`` arrays, CIFAR pickles, images, list files.

Every failure names the offending file, so a user with a half-downloaded benchmark learns which file
to fetch again instead of seeing a NumPy or pickle traceback hours into a run.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """A dataset file exists but is unusable (truncated, corrupt, wrong shape or layout).

    A ``ValueError`` so the CLI reports it as one clear line; missing files raise ``FileNotFoundError``.
    """


def require_file(path: Path, what: str = "file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def require_dir(path: Path, what: str = "folder") -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


# --------------------------------------------------------------------------------------------- .npy
def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file, checking that the file holds all the bytes it announces.

    Reads only the header, so a truncated 150 MB corruption file is reported before any adaptation
    starts (``np.load`` would only fail when that corruption's turn comes, or silently via mmap).
    """
    path = require_file(path, ".npy file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise DatasetError(f"{path}: not a valid .npy file ({err}); download or extract it again") from err
    if dtype.hasobject:
        raise DatasetError(f"{path}: holds Python objects, expected a numeric array")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        raise DatasetError(f"{path}: truncated .npy file ({size} of {expected} bytes); "
                           "download or extract it again")
    return tuple(shape), dtype


def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """``np.load`` with ``allow_pickle=False`` (a ``.npy`` can embed a pickle) and clear errors."""
    npy_header(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DatasetError(f"{path}: cannot read .npy file ({err})") from err


# ------------------------------------------------------------------------------------------ pickles
_RECONSTRUCT = np.ndarray(0).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct, per version


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for bytes.

    Only the latin-1 round trip those pickles need is allowed, not an arbitrary codec lookup.
    """
    if str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return text.encode("latin-1", errors)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild dicts, lists, str/bytes, numbers and numeric numpy arrays only.

    Why: the CIFAR-10/100 "python version" batches are pickles, and unpickling runs whatever callable
    the file names (``os.system`` included). A file from a mirror, a cache or a colleague's disk must
    not be able to run code, so every global except the handful needed to rebuild an ndarray is
    refused. Plain containers and scalars are pickle opcodes and need no global at all.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed") from None


def load_array_pickle(path: Path) -> dict:
    """Load a CIFAR-style pickle (a dict of arrays/lists/strings) safely; keys come back as ``str``."""
    path = require_file(path, "CIFAR batch")
    data = path.read_bytes()
    try:
        # encoding="bytes": the files were written by Python 2, whose str is bytes; arrays need that.
        obj = _ArrayOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, struct.error) as err:
        truncated = isinstance(err, EOFError) or "truncated" in str(err)
        kind = "truncated" if truncated else "corrupt or unsafe"
        raise DatasetError(f"{path}: {kind} pickle ({type(err).__name__}: {err}); "
                           "download or extract the CIFAR archive again") from err
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict in the CIFAR batch, found {type(obj).__name__}")
    return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


# ------------------------------------------------------------------------------------------- images
def _pil():
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - Pillow comes with torchvision
        raise ImportError("reading image datasets needs Pillow (pip install pillow)") from err
    return Image


IMAGE_FORMATS = ("JPEG", "PNG", "PPM", "BMP", "TIFF", "WEBP")  # the formats of IMAGE_EXTENSIONS


def open_image(path: Path, mode: str = "RGB"):
    """Open and fully decode an image (so truncated files fail here, naming the file), with only the
    decoders of ``IMAGE_EXTENSIONS``' formats: Pillow would otherwise try every decoder it has (EPS
    through Ghostscript included) on whatever a data folder holds."""
    Image = _pil()
    path = require_file(path, "image")
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            img.load()
            return img.convert(mode) if mode and img.mode != mode else img.copy()
    except (OSError, ValueError, SyntaxError) as err:  # PIL.UnidentifiedImageError is an OSError
        raise DatasetError(f"{path}: cannot decode image ({err})") from err


def resize_image(img, size, *, label: bool = False):
    """Resize like torchvision: an int sets the shorter side, a (H, W) pair sets both; ``None`` or
    ``"native"`` keeps the size.

    Labels use nearest neighbour so class ids are never blended into non-existent classes.
    """
    if size is None or size == "native":
        return img
    Image = _pil()
    w, h = img.size
    if isinstance(size, int):
        if min(w, h) == size:
            return img
        if w <= h:
            out_w, out_h = size, int(size * h / w)
        else:
            out_w, out_h = int(size * w / h), size
    else:
        out_h, out_w = int(size[0]), int(size[1])
        if (out_w, out_h) == (w, h):
            return img
    resample = Image.NEAREST if label else Image.BICUBIC
    return img.resize((out_w, out_h), resample)


def center_crop(img, size: int):
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def image_to_tensor(img) -> torch.Tensor:
    """PIL RGB image -> float tensor (3, H, W) in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def stack_images(tensors: Sequence[torch.Tensor], paths: Sequence[Path]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise DatasetError(f"images of different sizes {sorted(shapes)} in one batch (e.g. {paths[0]}); "
                           "resize them: --size (prepare), image_size=... (Python)")
    return torch.stack(list(tensors))


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder``, sorted by name (the frame order of a recording)."""
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_list_file(path: Path) -> list[str]:
    """Non-empty, stripped lines of a text list (CarlaTTA lists, RobustBench image-id lists)."""
    path = require_file(path, "list file")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise DatasetError(f"{path}: cannot read list file ({err})") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


def default_workers() -> int:
    """Decoder processes for file-based streams: a few, leaving a core for the model."""
    n = os.cpu_count() or 1
    return max(0, min(4, n - 1))
