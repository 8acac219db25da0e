"""The image codec against what real cameras publish and what a hostile DDS peer may send.

Raw: every encoding beyond rgb8/bgr8/rgba8/bgra8/mono8 is checked against a known image encoded here
by hand (Bayer mosaics in ROS pattern naming, BT.601 UYVY/YUYV, 16-bit in both byte orders, padded
rows), so a swapped OpenCV code or byte order shows up as a large error. Compressed: only JPEG and PNG
are decoded, the declared format must match the magic bytes, and sizes are refused from the header.
"""
from __future__ import annotations

import io
import sys
import time
import tracemalloc
import types
import warnings
import zlib

import numpy as np
import pytest

from tta_perception.runtime import image_codec as codec

pytest.importorskip("cv2")
PIL_Image = pytest.importorskip("PIL.Image")

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


# ----------------------------------------------------------------------------------- compressed
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
       b"newpath 0 0 moveto 8 8 lineto stroke showpage\n%%EOF\n")


def _encode(img, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    (img if isinstance(img, PIL_Image.Image) else PIL_Image.fromarray(img)).save(out, format=fmt, **kwargs)
    return out.getvalue()


def _refused(fmt, data, reason, **kwargs):
    with pytest.raises(codec.ImageError) as err:
        codec.compressed_to_rgb(fmt, data, **kwargs)
    assert err.value.reason == reason, str(err.value)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "", "rgb8; jpeg compressed bgr8"])
def test_eps_never_reaches_ghostscript(fmt, monkeypatch):
    from PIL import EpsImagePlugin

    opened = []

    def spy(self):
        opened.append(self)
        raise SyntaxError("EPS plugin reached")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy)
    message = _refused(fmt, EPS, codec.REASON_ENCODING)
    assert not opened and "%!PS" in message


def _other_formats():
    rgb = _scene(16, 16)
    out = {}
    for fmt in ("TIFF", "BMP", "GIF", "WEBP", "PCX", "SGI", "TGA", "ICO", "QOI"):
        try:
            out[fmt] = _encode(rgb, fmt)
        except (KeyError, OSError):  # this Pillow cannot write it
            pass
    return out


OTHER = _other_formats()


def test_other_image_formats_are_refused_whatever_the_label():
    assert {"TIFF", "BMP", "GIF", "PCX", "SGI", "TGA", "ICO"} <= set(OTHER)  # WEBP, QOI: if Pillow writes
    for kind, data in OTHER.items():
        for fmt in ("jpeg", "png", "", "bgr8; png compressed bgr8"):
            message = _refused(fmt, data, codec.REASON_ENCODING)
            assert "found data starting" in message, (kind, fmt, message)


def test_declared_format_must_match_the_magic_bytes():
    rgb = _scene()
    png, jpeg = _encode(rgb, "PNG"), _encode(rgb, "JPEG")
    message = _refused("jpeg", png, codec.REASON_ENCODING)
    assert "declared JPEG" in message and "found PNG" in message
    _refused("bgr8; png compressed bgr8", jpeg, codec.REASON_ENCODING)


@pytest.mark.parametrize("fmt", ["tiff", "h264", "bgr8; tiff compressed bgr8", "jpeg2000", "gif"])
def test_unknown_format_strings_are_refused_even_with_good_data(fmt):
    _refused(fmt, _encode(_scene(), "PNG"), codec.REASON_ENCODING)


@pytest.mark.parametrize("fmt,kind", [("rgb8; jpeg compressed bgr8", "JPEG"),
                                      ("bgr8; png compressed bgr8", "PNG"),
                                      ("jpg", "JPEG"), ("PNG", "PNG"), ("", "PNG"), ("", "JPEG")])
def test_image_transport_formats_decode_and_are_read(fmt, kind):
    rgb = _scene()
    out = codec.compressed_to_rgb(fmt, _encode(rgb, kind, **({"quality": 95} if kind == "JPEG" else {})))
    _check_output(out, rgb.shape)
    assert np.abs(out.astype(int) - rgb).mean() < (3 if kind == "JPEG" else 1e-9)
    if fmt:  # the declared format is binding: the other one's bytes are refused
        _refused(fmt, _encode(rgb, "PNG" if kind == "JPEG" else "JPEG"), codec.REASON_ENCODING)
    else:  # no format: the magic bytes decide, still only between JPEG and PNG
        _refused(fmt, OTHER["BMP"], codec.REASON_ENCODING)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (len(payload).to_bytes(4, "big") + kind + payload
            + (zlib.crc32(kind + payload) & 0xFFFFFFFF).to_bytes(4, "big"))


def _png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG header (valid CRCs) claiming a size; the image data is one tiny row."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(bytes(4)))
            + _png_chunk(b"IEND", b""))


def test_png_declaring_a_huge_size_is_refused_from_the_header_without_allocating():
    bomb = _png_declaring(100_000, 100_000)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        for limit in (codec.DEFAULT_MAX_PIXELS, 10**12):  # the caller's limit, then Pillow's
            message = _refused("png", bomb, codec.REASON_HUGE, max_pixels=limit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0 and peak < 1 << 20
    assert "MAX_IMAGE_PIXELS" in message


def test_pillows_bomb_warning_range_is_a_refusal_not_a_warning():
    side = int((PIL_Image.MAX_IMAGE_PIXELS * 1.5) ** 0.5)  # between Pillow's warning and error sizes
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _refused("png", _png_declaring(side, side), codec.REASON_HUGE, max_pixels=10**12)
    assert not [w for w in seen if issubclass(w.category, PIL_Image.DecompressionBombWarning)]


def test_jpeg_size_is_read_from_the_frame_header():
    jpeg = bytearray(_encode(_scene(), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = (60_000).to_bytes(2, "big") * 2  # height, width
    _refused("jpeg", bytes(jpeg), codec.REASON_HUGE)
    _refused("jpeg", _encode(_scene(), "JPEG"), codec.REASON_HUGE, max_pixels=100)


@pytest.mark.parametrize("kind", ["JPEG", "PNG"])
def test_truncated_or_corrupt_images_are_undecodable(kind):
    data = _encode(np.random.default_rng(RNG_SEED).integers(0, 256, (64, 64, 3), dtype=np.uint8), kind)
    for broken in (data[: len(data) // 2], data[:40], data[:12]):
        _refused(kind.lower(), broken, codec.REASON_DECODE)
        _refused("", broken, codec.REASON_DECODE)
    damaged = bytes([data[0] ^ 0x01]) + data[1:]  # a broken signature is no JPEG/PNG: no decoder runs
    _refused(kind.lower(), damaged, codec.REASON_ENCODING)
    _refused("", damaged, codec.REASON_ENCODING)


def _png_cases():
    rng = np.random.default_rng(RNG_SEED)
    rgb = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    grey16 = rng.integers(0, 65536, (8, 10), dtype=np.uint16)
    palette = PIL_Image.fromarray(rgb).quantize(16)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (8, 10, 1), dtype=np.uint8)], axis=2)
    import cv2

    rgb16 = rng.integers(0, 65536, (8, 10, 3), dtype=np.uint16)
    png_rgb16 = cv2.imencode(".png", np.ascontiguousarray(rgb16[:, :, ::-1]))[1].tobytes()
    return {
        "grey": (_encode(grey, "PNG"), np.repeat(grey[:, :, None], 3, axis=2)),
        "grey_alpha": (_encode(PIL_Image.fromarray(rgba[..., ::3].copy(), "LA"), "PNG"),
                       np.repeat(grey[:, :, None], 3, axis=2)),
        "rgba": (_encode(rgba, "PNG"), rgb),
        "palette": (_encode(palette, "PNG"), np.array(palette.convert("RGB"))),
        "grey16": (_encode(PIL_Image.fromarray(grey16), "PNG"),
                   np.repeat((grey16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2)),
        "rgb16": (png_rgb16, (rgb16 >> 8).astype(np.uint8)),
    }


PNGS = _png_cases()


def test_png_modes_come_out_as_rgb():
    for name, (data, expected) in PNGS.items():  # grey16 is the one Pillow's own convert clips
        out = codec.compressed_to_rgb("png", data)
        _check_output(out, expected.shape)
        np.testing.assert_array_equal(out, expected, err_msg=name)


def test_opencv_fallback_has_the_same_checks(monkeypatch):
    rgb = _scene()
    png, jpeg = _encode(rgb, "PNG"), _encode(rgb, "JPEG", quality=95)
    monkeypatch.setitem(sys.modules, "PIL", None)  # from PIL import Image -> ImportError
    np.testing.assert_array_equal(codec.compressed_to_rgb("png", png), rgb)
    assert np.abs(codec.compressed_to_rgb("", jpeg).astype(int) - rgb).mean() < 3
    _refused("jpeg", EPS, codec.REASON_ENCODING)
    _refused("png", OTHER["TIFF"], codec.REASON_ENCODING)
    _refused("png", _png_declaring(100_000, 100_000), codec.REASON_HUGE)
    _refused("jpeg", jpeg[: len(jpeg) // 2], codec.REASON_DECODE)
