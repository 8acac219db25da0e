"""Camera images as bytes + encoding (the fields of sensor_msgs/Image and CompressedImage) <-> NumPy,
with the checks a camera driver cannot be trusted on.

It works on the fields, not on messages, so the node (``ros.convert``), the bags and the replay
decode alike. No rclpy, no cv_bridge (absent from PyPI; its PyPI namesake breaks under NumPy 2).
Every rejection raises :class:`ImageError` whose ``reason`` is a short counter key the node reports in
its diagnostics, so a bad camera shows up as a number rather than a log flood.

Raw images (:func:`raw_to_rgb`, names from sensor_msgs/image_encodings.h, case-insensitive):

- ``rgb8 bgr8 rgba8 bgra8 mono8`` and the OpenCV names ``8UC1`` (mono8), ``8UC3`` (bgr8, as cv_bridge
  reads it), ``8UC4`` (bgra8): pure NumPy, alpha dropped;
- ``rgb16 bgr16 rgba16 bgra16 mono16``, ``16UC1`` (mono16): pure NumPy, ``is_bigendian`` gives the byte
  order, scaled to 8 bits by keeping the high byte (``>> 8``, i.e. / 256 rounded down);
- ``bayer_rggb8 bayer_bggr8 bayer_gbrg8 bayer_grbg8`` and their ``*16`` variants: demosaiced by OpenCV
  (bilinear ``cvtColor``; 16-bit ones are scaled to 8 bits first);
- ``yuv422`` (UYVY byte order, alias ``uyvy``) and ``yuv422_yuy2`` (YUYV, alias ``yuyv``): converted by
  OpenCV (BT.601, video range Y 16-235).

OpenCV is imported only for Bayer and YUV. Compressed images (:func:`compressed_to_rgb`) are JPEG or
PNG only: the sender chooses the bytes, so no other image plugin may ever see them.

:data:`ENCODINGS` is what :func:`rgb_to_raw` writes (and ``ros.weather_camera`` offers);
:data:`INPUT_ENCODINGS` is everything :func:`raw_to_rgb` reads.
"""
from __future__ import annotations

import io
import re
import sys
import threading
import warnings
from typing import Any, NamedTuple

import numpy as np

# encoding -> (channels, channel order of the first three channels): the encodings rgb_to_raw writes
ENCODINGS: dict[str, tuple[int, str]] = {
    "rgb8": (3, "rgb"),
    "bgr8": (3, "bgr"),
    "rgba8": (4, "rgb"),
    "bgra8": (4, "bgr"),  # what the CARLA ROS bridge publishes
    "mono8": (1, "mono"),
}
DEFAULT_MAX_PIXELS = 4096 * 4096

# reasons, also the diagnostics counter keys
REASON_ENCODING = "bad_encoding"
REASON_SIZE = "bad_size"
REASON_EMPTY = "empty_image"
REASON_HUGE = "huge_image"
REASON_DECODE = "undecodable"
REASONS = (REASON_ENCODING, REASON_SIZE, REASON_EMPTY, REASON_HUGE, REASON_DECODE)


class ImageError(ValueError):
    """A frame that cannot be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class _Layout(NamedTuple):
    channels: int  # samples per pixel in the buffer (2 for YUV 4:2:2: one luma + one chroma byte)
    depth: int     # bytes per sample
    kind: str      # "rgb" / "bgr" / "mono" channel order, "bayer_xxxx" pattern, or "uyvy" / "yuyv"


_RAW: dict[str, _Layout] = {name: _Layout(ch, 1, order) for name, (ch, order) in ENCODINGS.items()}
_RAW.update({
    "8uc1": _RAW["mono8"], "8uc3": _RAW["bgr8"], "8uc4": _RAW["bgra8"],
    "rgb16": _Layout(3, 2, "rgb"), "bgr16": _Layout(3, 2, "bgr"),
    "rgba16": _Layout(4, 2, "rgb"), "bgra16": _Layout(4, 2, "bgr"),
    "mono16": _Layout(1, 2, "mono"), "16uc1": _Layout(1, 2, "mono"),
    "yuv422": _Layout(2, 1, "uyvy"), "uyvy": _Layout(2, 1, "uyvy"),
    "yuv422_yuy2": _Layout(2, 1, "yuyv"), "yuyv": _Layout(2, 1, "yuyv"),
})
for _pattern in ("rggb", "bggr", "gbrg", "grbg"):
    _RAW[f"bayer_{_pattern}8"] = _Layout(1, 1, f"bayer_{_pattern}")
    _RAW[f"bayer_{_pattern}16"] = _Layout(1, 2, f"bayer_{_pattern}")
INPUT_ENCODINGS: tuple[str, ...] = tuple(_RAW)

# OpenCV names a Bayer pattern by the 2x2 block starting at (1, 1), ROS by the one at (0, 0): ROS
# bayer_rggb is OpenCV's "BG". These legacy names mean the same in OpenCV 3, 4 and 5 (checked by
# test_codec_encodings against a mosaic made by hand).
_CV_CODES = {
    "bayer_rggb": "COLOR_BayerBG2RGB", "bayer_bggr": "COLOR_BayerRG2RGB",
    "bayer_gbrg": "COLOR_BayerGR2RGB", "bayer_grbg": "COLOR_BayerGB2RGB",
    "uyvy": "COLOR_YUV2RGB_UYVY", "yuyv": "COLOR_YUV2RGB_YUYV",
}


def _check_dims(height: int, width: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageError(REASON_EMPTY, f"zero-sized image {width}x{height}")
    if height * width > max_pixels:
        raise ImageError(REASON_HUGE, f"image {width}x{height} exceeds max_image_pixels={max_pixels}")


def raw_to_rgb(encoding: str, height: int, width: int, step: int, data: Any,
               max_pixels: int = DEFAULT_MAX_PIXELS, is_bigendian: bool = False) -> np.ndarray:
    """Decode a raw ``sensor_msgs/Image`` into a contiguous, writable (H, W, 3) uint8 RGB array.

    Accepts :data:`INPUT_ENCODINGS` (see the module docstring for how each is decoded); 16-bit samples
    keep their high byte, whose position ``is_bigendian`` gives. ``data`` is anything exposing the
    buffer protocol (rclpy gives ``array.array('B')``); it is viewed, not copied, until the final
    conversion. Rows may be padded (``step > width * bytes per pixel``) but the buffer must be exactly
    ``step * height`` bytes, as REP 118 / image_transport produce. All sizes are checked before the
    data is touched.
    """
    enc = (encoding or "").lower()
    layout = _RAW.get(enc)
    if layout is None:
        raise ImageError(REASON_ENCODING,
                         f"unsupported encoding {encoding!r}; supported: {', '.join(INPUT_ENCODINGS)}")
    height, width, step = int(height), int(width), int(step)
    _check_dims(height, width, max_pixels)
    if layout.kind in ("uyvy", "yuyv") and width % 2:
        raise ImageError(REASON_SIZE, f"{enc} needs an even width (pixel pairs share chroma), got {width}")
    row = width * layout.channels * layout.depth
    if step < row:
        raise ImageError(REASON_SIZE, f"step {step} < width*bytes per pixel {row} for {enc} {width}x{height}")
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    if buf.size != step * height:
        raise ImageError(REASON_SIZE, f"data has {buf.size} bytes, expected step*height = "
                                      f"{step}*{height} = {step * height}")
    rows = buf.reshape(height, step)[:, :row]
    if layout.depth == 2:  # the high byte of each sample: value >> 8
        rows = rows.reshape(height, width * layout.channels, 2)[:, :, 0 if is_bigendian else 1]
    pixels = rows.reshape(height, width, layout.channels)
    if layout.kind == "mono":
        return np.repeat(pixels, 3, axis=2)
    if layout.kind == "bgr":
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    if layout.kind == "rgb":
        return np.ascontiguousarray(pixels[:, :, :3])
    return _opencv_convert(enc, layout.kind, pixels)


def _opencv_convert(enc: str, kind: str, pixels: np.ndarray) -> np.ndarray:
    """Bayer demosaicing and YUV 4:2:2 through ``cv2.cvtColor`` (imported here: only these need it)."""
    try:
        import cv2
    except ImportError:
        raise ImageError(REASON_ENCODING, f"encoding {enc!r} needs OpenCV: "
                                          "pip install opencv-python-headless") from None
    src = np.ascontiguousarray(pixels[:, :, 0] if kind.startswith("bayer") else pixels)
    try:
        out = cv2.cvtColor(src, getattr(cv2, _CV_CODES[kind]))
    except cv2.error as err:
        raise ImageError(REASON_DECODE, f"OpenCV cannot convert {enc} {src.shape[1]}x{src.shape[0]}: "
                                        f"{str(err).strip().splitlines()[-1]}") from None
    return np.ascontiguousarray(out)


LABEL_ENCODINGS = ("mono8", "8uc1")


def raw_to_labels(encoding: str, height: int, width: int, step: int, data: Any) -> np.ndarray:
    """(H, W) uint8 class ids of a mono8 label image (ground truth, the node's ``class_ids``)."""
    if str(encoding).lower() not in LABEL_ENCODINGS:
        raise ImageError(REASON_ENCODING, f"class ids must be mono8, got encoding {encoding!r}")
    h, w, step = int(height), int(width), int(step)
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    if h <= 0 or w <= 0:
        raise ImageError(REASON_EMPTY, f"zero-sized class-id image {w}x{h}")
    if step < w or buf.size != step * h:
        raise ImageError(REASON_SIZE, f"class-id image {w}x{h} step {step} does not fit {buf.size} bytes")
    return buf.reshape(h, step)[:, :w].copy()


JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# image_transport's format strings: "jpeg", "png", "<encoding>; jpeg compressed <encoding>", ...
_FORMAT = re.compile(r"(?:\w+\s*;\s*)?(jpeg|jpg|png)(?:\s+compressed(?:\s+\w+)?)?")
# JPEG frame headers (SOF0-15 less DHT, JPG, DAC; and DHP), the segments that carry the size
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xDE}
# warnings.catch_warnings swaps process-wide state: keep our own opens from interleaving
_OPEN_LOCK = threading.Lock()


def _declared_format(fmt: str) -> str | None:
    """'jpeg' or 'png' from a CompressedImage ``format``; None when empty (then the bytes decide)."""
    f = (fmt or "").strip().lower()
    if not f:
        return None
    if "compresseddepth" in f:
        raise ImageError(REASON_ENCODING, f"unsupported compressed format {fmt!r} (depth)")
    m = _FORMAT.fullmatch(f)
    if m is None:
        raise ImageError(REASON_ENCODING, f"unsupported compressed format {fmt!r}; only jpeg and png "
                                          "are decoded")
    return "png" if m.group(1) == "png" else "jpeg"


def _sniff(raw: bytes) -> str | None:
    if raw.startswith(JPEG_MAGIC):
        return "jpeg"
    if raw.startswith(PNG_MAGIC):
        return "png"
    return None


def _png_size(raw: bytes) -> tuple[int, int]:
    """(width, height) from IHDR, which the PNG spec puts first, right after the signature."""
    if len(raw) < 24 or raw[12:16] != b"IHDR" or int.from_bytes(raw[8:12], "big") != 13:
        raise ImageError(REASON_DECODE, "PNG does not start with a valid IHDR chunk")
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def _jpeg_size(raw: bytes) -> tuple[int, int]:
    """(width, height) of the last frame header before the first scan, the one Pillow uses too.

    Walks the marker segments by their lengths; junk between segments is refused, not skipped.
    """
    pos, n, size = 2, len(raw), None
    while True:
        if pos >= n or raw[pos] != 0xFF:
            raise ImageError(REASON_DECODE, f"JPEG header broken: no marker at byte {pos}")
        while pos < n and raw[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise ImageError(REASON_DECODE, "JPEG header truncated")
        marker = raw[pos]
        pos += 1
        if marker == 0xDA:  # start of scan: the header is complete
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            continue
        length = int.from_bytes(raw[pos:pos + 2], "big")
        if marker == 0xD9 or marker == 0x00 or length < 2 or pos + length > n:
            raise ImageError(REASON_DECODE, f"JPEG header broken: marker 0x{marker:02X} at byte {pos - 1}")
        if marker in _JPEG_SOF:
            if length < 7:
                raise ImageError(REASON_DECODE, "JPEG frame header too short")
            size = (int.from_bytes(raw[pos + 5:pos + 7], "big"), int.from_bytes(raw[pos + 3:pos + 5], "big"))
        pos += length
    if size is None:
        raise ImageError(REASON_DECODE, "JPEG has no frame header before its scan")
    return size


def compressed_to_rgb(fmt: str, data: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` to a contiguous, writable (H, W, 3) uint8 RGB array.

    Only JPEG and PNG, whichever ``fmt`` declares (``jpeg``/``jpg``/``png`` or image_transport's
    ``"<enc>; jpeg compressed <enc>"``; the encodings in it are ignored, the file's colours are right
    either way). An empty ``fmt`` is taken from the magic bytes, still only JPEG or PNG, since some
    drivers leave it blank. The magic bytes must match the declared format, so no other decoder (EPS
    would run Ghostscript) ever sees the sender's bytes. The size is read from the header, by this
    module, and checked against ``max_pixels`` and Pillow's ``MAX_IMAGE_PIXELS`` (decompression bombs,
    both ``huge_image``) before anything is decoded. Pillow (restricted to the one format) is used where
    installed, else OpenCV; both are imported here, lazily. Grey, alpha, palette and 16-bit images come
    out as RGB; 16 bits are scaled to 8 by ``>> 8`` as for raw images; alpha is dropped.
    """
    kind = _declared_format(fmt)
    raw = bytes(memoryview(data).cast("B"))
    if not raw:
        raise ImageError(REASON_EMPTY, "compressed image with no data")
    found = _sniff(raw)
    if found is None or (kind is not None and found != kind):
        what = f"{found.upper()} data" if found else f"data starting {raw[:8]!r}"
        declared = f"declared {kind.upper()} ({fmt!r})" if kind else "empty format"
        raise ImageError(REASON_ENCODING, f"compressed image refused: {declared} but found {what}")
    width, height = _png_size(raw) if found == "png" else _jpeg_size(raw)
    _check_dims(height, width, max_pixels)
    try:
        from PIL import Image as PILImage
    except ImportError:
        PILImage = None
    if PILImage is not None:
        bomb = PILImage.MAX_IMAGE_PIXELS
        if bomb is not None and width * height > bomb:
            raise ImageError(REASON_HUGE, f"image {width}x{height} exceeds Pillow's MAX_IMAGE_PIXELS={bomb} "
                                          "(decompression bomb)")
        return _pillow_decode(PILImage, found, raw, width, height)
    return _opencv_decode(found, raw, width, height)


def _pillow_decode(PILImage: Any, kind: str, raw: bytes, width: int, height: int) -> np.ndarray:
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # the size was checked above; should Pillow read another one, its bomb warning is a refusal
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            img = PILImage.open(io.BytesIO(raw), formats=[kind.upper()])
        with img:
            if img.size != (width, height):
                raise ImageError(REASON_DECODE, f"{kind.upper()} header says {width}x{height}, "
                                                f"Pillow reads {img.width}x{img.height}")
            if img.mode.startswith("I"):  # 16-bit grey PNG: Pillow's convert("RGB") would clip at 255
                grey = (np.clip(np.asarray(img, np.int64), 0, 65535) >> 8).astype(np.uint8)
                return np.repeat(grey[:, :, None], 3, axis=2)
            return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy
    except ImageError:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as err:
        raise ImageError(REASON_HUGE, f"decompression bomb refused: {err}") from None
    except Exception as err:  # Pillow raises many types for corrupt streams
        line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ImageError(REASON_DECODE, f"cannot decode {kind.upper()} image: {line}") from None


def _opencv_decode(kind: str, raw: bytes, width: int, height: int) -> np.ndarray:
    try:
        import cv2
    except ImportError:
        raise ImageError(REASON_DECODE, "neither Pillow nor OpenCV is installed to decode "
                                        "CompressedImage") from None
    # the magic bytes were checked, so imdecode picks its JPEG or PNG decoder; EXIF rotation ignored,
    # as Pillow does; IMREAD_COLOR gives 8-bit BGR
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None or img.shape[:2] != (height, width):
        raise ImageError(REASON_DECODE, f"cannot decode {kind.upper()} image {width}x{height}")
    return np.ascontiguousarray(img[:, :, ::-1])


def rgb_to_raw(rgb: np.ndarray, encoding: str = "rgb8") -> tuple[int, int, int, bytes]:
    """Inverse of :func:`raw_to_rgb` for tests and publishers: ``(height, width, step, data)``."""
    enc = encoding.lower()
    if enc not in ENCODINGS:
        raise ImageError(REASON_ENCODING, f"unsupported encoding {encoding!r}")
    rgb = np.asarray(rgb, dtype=np.uint8)
    channels, order = ENCODINGS[enc]
    if order == "mono":
        out = rgb[:, :, :1] if rgb.ndim == 3 else rgb[:, :, None]
    else:
        out = rgb[:, :, ::-1] if order == "bgr" else rgb
        if channels == 4:
            alpha = np.full(out.shape[:2] + (1,), 255, np.uint8)
            out = np.concatenate([out, alpha], axis=2)
    out = np.ascontiguousarray(out)
    h, w = out.shape[:2]
    return h, w, w * channels, out.tobytes()


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, what a mono camera would see of the scene."""
    rgb = np.asarray(rgb, np.float32)
    return np.clip(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114 + 0.5, 0, 255).astype(np.uint8)


def mono8(array: np.ndarray) -> tuple[int, int, int, bytes]:
    """(height, width, step, data) of a 2-D uint8 array as ``mono8``."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return a.shape[0], a.shape[1], a.shape[1], a.tobytes()


def float32c1(array: np.ndarray) -> tuple[int, int, int, bytes, bool]:
    """(height, width, step, data, is_bigendian) of a 2-D array as ``32FC1`` in native byte order."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    return a.shape[0], a.shape[1], a.shape[1] * 4, a.tobytes(), sys.byteorder == "big"


def rgb8(array: np.ndarray) -> tuple[int, int, int, bytes]:
    """(height, width, step, data) of an (H, W, 3) uint8 array as ``rgb8``."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return a.shape[0], a.shape[1], a.shape[1] * 3, a.tobytes()
