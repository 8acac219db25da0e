"""The image codec against what real cameras publish and what a hostile DDS peer may send.

Raw: every encoding beyond rgb8/bgr8/rgba8/bgra8/mono8 is checked against a known image encoded here
by hand (Bayer mosaics in ROS pattern naming, BT.601 UYVY/YUYV, 16-bit in both byte orders, padded
rows), so a swapped OpenCV code or byte order shows up as a large error.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from tta_perception.runtime import image_codec as codec

pytest.importorskip("cv2")

RNG_SEED = 1234


def _scene(h: int = 24, w: int = 32) -> np.ndarray:
    """Smooth gradients in every channel (left) and flat colour patches (right): demosaic-friendly."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([40 + 150 * x / w, 200 - 120 * y / h, 60 + 60 * (x + y) / (w + h)], axis=2)
    rgb[: h // 2, w // 2:] = (200, 100, 30)
    rgb[h // 2:, w // 2:] = (20, 90, 220)
    return np.round(rgb).astype(np.uint8)


def _interior_error(out: np.ndarray, ref: np.ndarray, border: int = 2) -> float:
    """Mean abs error away from the image border and the patch edges (where demosaicing blurs)."""
    err = np.abs(out.astype(np.int32) - ref.astype(np.int32))
    h, w = ref.shape[:2]
    keep = np.zeros((h, w), bool)
    keep[border:h - border, border:w - border] = True
    keep[:, w // 2 - border:w // 2 + border] = False
    keep[h // 2 - border:h // 2 + border, w // 2:] = False
    return float(err[keep].mean())


def _pad(rows: np.ndarray, extra: int) -> tuple[int, bytes]:
    """(step, data) of (H, row bytes) with ``extra`` junk bytes after every row."""
    rows = rows.reshape(rows.shape[0], -1)
    junk = np.random.default_rng(RNG_SEED).integers(0, 256, (rows.shape[0], extra), dtype=np.uint8)
    padded = np.concatenate([rows, junk], axis=1)
    return padded.shape[1], padded.tobytes()


def _as16(values8: np.ndarray, big: bool) -> np.ndarray:
    """16-bit samples whose high byte is ``values8`` and whose low byte is noise, in a byte order."""
    low = np.random.default_rng(RNG_SEED).integers(0, 256, values8.shape, dtype=np.uint16)
    return (values8.astype(np.uint16) * 256 + low).astype(">u2" if big else "<u2")


def _decode(encoding, samples, width, extra=0, big=False):
    h = samples.shape[0]
    step, data = _pad(np.ascontiguousarray(samples).view(np.uint8), extra)
    return codec.raw_to_rgb(encoding, h, width, step, data, is_bigendian=big)


def _check_output(out, shape):
    assert out.shape == shape and out.dtype == np.uint8
    assert out.flags.c_contiguous and out.flags.writeable


# ------------------------------------------------------------------------------------------ raw
def test_writable_encodings_stay_the_publishers_and_input_encodings_add_the_rest():
    assert tuple(codec.ENCODINGS) == ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")  # weather_camera's choice
    assert set(codec.ENCODINGS) < set(codec.INPUT_ENCODINGS)
    assert {"bayer_rggb8", "yuv422", "yuyv", "rgb16", "16uc1", "8uc3"} <= set(codec.INPUT_ENCODINGS)


@pytest.mark.parametrize("encoding,source", [("8UC1", "mono8"), ("8UC3", "bgr8"), ("8UC4", "bgra8")])
def test_opencv_type_names_read_as_cv_bridge_does(encoding, source):
    rgb = _scene()
    if source == "mono8":
        rgb = np.repeat(codec.to_grey(rgb)[:, :, None], 3, axis=2)
    h, w, step, data = codec.rgb_to_raw(rgb, source)
    np.testing.assert_array_equal(codec.raw_to_rgb(encoding, h, w, step, data), rgb)


@pytest.mark.parametrize("big", [False, True], ids=["little", "big"])
@pytest.mark.parametrize("encoding", ["rgb16", "bgr16", "rgba16", "bgra16", "mono16", "16UC1"])
def test_16_bit_encodings_keep_the_high_byte_in_either_byte_order(encoding, big):
    rgb = _scene()
    if encoding in ("mono16", "16UC1"):
        grey = codec.to_grey(rgb)
        samples, expected = grey, np.repeat(grey[:, :, None], 3, axis=2)
    else:
        samples = rgb[:, :, ::-1] if encoding.startswith("bgr") else rgb
        if "a" in encoding[3:]:
            samples = np.concatenate([samples, np.full(rgb.shape[:2] + (1,), 77, np.uint8)], axis=2)
        expected = rgb
    out = _decode(encoding, _as16(samples, big), rgb.shape[1], extra=6, big=big)
    _check_output(out, rgb.shape)
    np.testing.assert_array_equal(out, expected)


def test_16_bit_byte_order_matters():
    samples = _as16(codec.to_grey(_scene()), big=True)
    right = _decode("mono16", samples, samples.shape[1], big=True)
    wrong = _decode("mono16", samples, samples.shape[1], big=False)
    assert not np.array_equal(right, wrong)


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """One sample per pixel, ROS naming: 'rggb' is row 0 R G R G..., row 1 G B G B..."""
    channel = {"r": 0, "g": 1, "b": 2}
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[pattern[k]]]
    return out


@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns_demosaic_to_the_original(pattern, depth):
    rgb = _scene()
    mosaic = _mosaic(rgb, pattern)
    samples = _as16(mosaic, big=False) if depth == 16 else mosaic
    out = _decode(f"bayer_{pattern}{depth}", samples, rgb.shape[1], extra=3)
    _check_output(out, rgb.shape)
    assert _interior_error(out, rgb) < 3.0
    # the flat patches: the colour itself, channels in place (a shifted pattern gives ~100 off here)
    assert np.abs(out[4:8, 20:28].astype(int) - (200, 100, 30)).max() <= 2
    assert np.abs(out[16:20, 20:28].astype(int) - (20, 90, 220)).max() <= 2


def _yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """BT.601 video range (Y 16-235, chroma 16-240), chroma of each horizontal pixel pair averaged."""
    f = rgb.astype(np.float64) / 255.0
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    u = (u[:, 0::2] + u[:, 1::2]) / 2
    v = (v[:, 0::2] + v[:, 1::2]) / 2
    y0, y1 = y[:, 0::2], y[:, 1::2]
    quads = (u, y0, v, y1) if order == "uyvy" else (y0, u, y1, v)
    out = np.stack(quads, axis=2).reshape(rgb.shape[0], rgb.shape[1] * 2)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("encoding,order", [("yuv422", "uyvy"), ("uyvy", "uyvy"),
                                            ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")])
def test_yuv422_decodes_to_the_original(encoding, order):
    rgb = np.repeat(_scene(24, 16), 2, axis=1)  # pixel pairs share a colour: chroma loses nothing
    out = _decode(encoding, _yuv422(rgb, order), rgb.shape[1], extra=4)
    _check_output(out, rgb.shape)
    err = np.abs(out.astype(int) - rgb)
    assert err.mean() < 1.5 and err.max() <= 4


def test_yuv422_needs_an_even_width():
    with pytest.raises(codec.ImageError) as err:
        codec.raw_to_rgb("yuv422", 2, 5, 10, bytes(20))
    assert err.value.reason == codec.REASON_SIZE and "even width" in str(err.value)


# bytes per pixel of every input encoding, for the size checks
BPP = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3, "8uc4": 4,
       "rgb16": 6, "bgr16": 6, "rgba16": 8, "bgra16": 8, "mono16": 2, "16uc1": 2,
       "yuv422": 2, "uyvy": 2, "yuv422_yuy2": 2, "yuyv": 2,
       **{f"bayer_{p}{d}": d // 8 for p in ("rggb", "bggr", "gbrg", "grbg") for d in (8, 16)}}


def test_every_input_encoding_has_a_size_table_entry():
    assert set(BPP) == set(codec.INPUT_ENCODINGS)


@pytest.mark.parametrize("encoding", sorted(set(BPP) - set(codec.ENCODINGS)))  # the others: test_runtime
def test_sizes_are_checked_for_every_new_encoding(encoding):
    h, w = 4, 6
    row = w * BPP[encoding]
    cases = [((h, w, row - 1, bytes((row - 1) * h)), codec.REASON_SIZE),   # step too small
             ((h, w, row, bytes(row * h - 1)), codec.REASON_SIZE),         # data short
             ((h, w, row + 2, bytes((row + 2) * h + 1)), codec.REASON_SIZE),  # data long
             ((0, w, row, b""), codec.REASON_EMPTY),
             ((100_000, 100_000, 100_000 * BPP[encoding], b""), codec.REASON_HUGE)]
    for args, reason in cases:
        with pytest.raises(codec.ImageError) as err:
            codec.raw_to_rgb(encoding, *args)
        assert err.value.reason == reason, (args[:3], str(err.value))
    _check_output(codec.raw_to_rgb(encoding, h, w, row + 2, bytes((row + 2) * h)), (h, w, 3))


def test_bayer_and_yuv_without_opencv_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    for encoding, step in (("bayer_rggb8", 6), ("yuv422", 12)):
        with pytest.raises(codec.ImageError) as err:
            codec.raw_to_rgb(encoding, 4, 6, step, bytes(step * 4))
        assert err.value.reason == codec.REASON_ENCODING and "opencv-python-headless" in str(err.value)
    assert codec.raw_to_rgb("mono16", 4, 6, 12, bytes(48)).shape == (4, 6, 3)  # NumPy only


def test_callers_pass_is_bigendian():
    rgb = _scene()
    samples = _as16(rgb, big=True)
    h, w = rgb.shape[:2]
    fields = dict(encoding="rgb16", height=h, width=w, step=w * 6, is_bigendian=1)
    pytest.importorskip("rosbags")
    from tta_perception.bags import io as B

    msg = types.SimpleNamespace(data=np.frombuffer(samples.tobytes(), np.uint8), **fields)
    np.testing.assert_array_equal(B.decode_image(msg, B.TYPE_IMAGE), rgb)
    pytest.importorskip("sensor_msgs.msg")
    from sensor_msgs.msg import Image

    from tta_perception.ros import convert

    ros_msg = Image(**fields)
    ros_msg.data = samples.tobytes()
    np.testing.assert_array_equal(convert.rgb_of(ros_msg, False, codec.DEFAULT_MAX_PIXELS), rgb)
