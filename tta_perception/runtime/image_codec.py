"""Camera images as bytes + encoding (the fields of sensor_msgs/Image and CompressedImage) <-> NumPy,
with the checks a camera driver cannot be trusted on.

It works on the fields, not on messages, so the node (``ros.convert``), the bags and the replay
decode alike. Pure NumPy (no rclpy, no cv_bridge: cv_bridge is absent from PyPI and its PyPI
namesake breaks under NumPy 2). Every rejection raises :class:`ImageError` whose ``reason`` is a
short counter key the node reports in its diagnostics, so a bad camera shows up as a number rather
than a log flood.
"""
from __future__ import annotations

import io
import sys
from typing import Any

import numpy as np

# encoding -> (channels, channel order of the first three channels)
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


def _check_dims(height: int, width: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageError(REASON_EMPTY, f"zero-sized image {width}x{height}")
    if height * width > max_pixels:
        raise ImageError(REASON_HUGE, f"image {width}x{height} exceeds max_image_pixels={max_pixels}")


def raw_to_rgb(encoding: str, height: int, width: int, step: int, data: Any,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a raw ``sensor_msgs/Image`` into a contiguous (H, W, 3) uint8 RGB array.

    ``data`` is anything exposing the buffer protocol (rclpy gives ``array.array('B')``); it is viewed,
    not copied, until the final channel reorder. Rows may be padded (``step > width * channels``) but the
    buffer must be exactly ``step * height`` bytes, as REP 118 / image_transport produce.
    """
    enc = (encoding or "").lower()
    if enc not in ENCODINGS:
        raise ImageError(REASON_ENCODING,
                         f"unsupported encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    channels, order = ENCODINGS[enc]
    height, width, step = int(height), int(width), int(step)
    _check_dims(height, width, max_pixels)
    row = width * channels
    if step < row:
        raise ImageError(REASON_SIZE, f"step {step} < width*channels {row} for {enc} {width}x{height}")
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    if buf.size != step * height:
        raise ImageError(REASON_SIZE, f"data has {buf.size} bytes, expected step*height = "
                                      f"{step}*{height} = {step * height}")
    rows = buf.reshape(height, step)[:, :row].reshape(height, width, channels)
    if order == "mono":
        return np.repeat(rows, 3, axis=2)
    if order == "bgr":
        return np.ascontiguousarray(rows[:, :, 2::-1])
    return np.ascontiguousarray(rows[:, :, :3])


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


def compressed_to_rgb(fmt: str, data: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (jpeg/png, image_transport format strings) to RGB.

    Pillow is used where installed, else OpenCV; both are imported here, lazily, so the node starts
    without them when only raw images are used. The header is checked against ``max_pixels`` before the
    pixels are decoded (decompression bombs).
    """
    if "compresseddepth" in (fmt or "").lower():
        raise ImageError(REASON_ENCODING, f"unsupported compressed format {fmt!r} (depth)")
    raw = bytes(memoryview(data).cast("B"))
    if not raw:
        raise ImageError(REASON_EMPTY, "compressed image with no data")
    try:
        from PIL import Image as PILImage
    except ImportError:
        PILImage = None
    if PILImage is not None:
        try:
            with PILImage.open(io.BytesIO(raw)) as img:
                _check_dims(img.height, img.width, max_pixels)
                return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy
        except ImageError:
            raise
        except Exception as err:  # Pillow raises many types for corrupt streams
            raise ImageError(REASON_DECODE, f"cannot decode compressed image ({fmt!r}): {err}") from None
    try:
        import cv2
    except ImportError:
        raise ImageError(REASON_DECODE, "neither Pillow nor OpenCV is installed to decode "
                                        "CompressedImage") from None
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(REASON_DECODE, f"cannot decode compressed image ({fmt!r})")
    _check_dims(img.shape[0], img.shape[1], max_pixels)
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
