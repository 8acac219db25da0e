"""Message <-> array conversion for the nodes: images in (through ``runtime.image_codec``, which works
on the message fields), a frame's outputs (``runtime.postprocess.Result``) out as messages that carry
the input header unchanged."""
from __future__ import annotations

import array
import json
from typing import Any, Optional, Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from ..runtime import image_codec as codec
from ..runtime.messages import stamp_to_ns
from ..runtime.postprocess import Result, classification_payload


def stamp_ns(header: Header) -> int:
    return stamp_to_ns(header.stamp.sec, header.stamp.nanosec)


def image_msg(header: Header, encoding: str, height: int, width: int, step: int, data: bytes,
              bigendian: bool = False) -> Image:
    """A ``sensor_msgs/Image``; the bytes go in as an ``array.array`` (taken as is: no per-byte checks)."""
    msg = Image(header=header, height=height, width=width, encoding=encoding,
                is_bigendian=bool(bigendian), step=step)
    buf = array.array("B")
    buf.frombytes(data)
    msg.data = buf
    return msg


def rgb_image(header: Header, rgb: np.ndarray, encoding: str) -> Image:
    """An (H, W, 3) RGB frame as ``sensor_msgs/Image`` in any encoding the node reads."""
    if encoding == "mono8":
        h, w, step, data = codec.mono8(codec.to_grey(rgb))
    else:
        h, w, step, data = codec.rgb_to_raw(rgb, encoding)
    return image_msg(header, encoding, h, w, step, data)


def mono8_image(header: Header, array2d: np.ndarray) -> Image:
    return image_msg(header, "mono8", *codec.mono8(array2d))


def rgb_of(msg: Any, compressed: bool, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an Image or CompressedImage; ``codec.ImageError`` when unusable."""
    if compressed:
        return codec.compressed_to_rgb(msg.format, msg.data, max_pixels)
    return codec.raw_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data, max_pixels,
                            is_bigendian=bool(msg.is_bigendian))


def labels_of(msg: Image) -> np.ndarray:
    """(H, W) class ids of a mono8 image; ``codec.ImageError`` when it is not one."""
    return codec.raw_to_labels(msg.encoding, msg.height, msg.width, msg.step, msg.data)


def segmentation_messages(result: Result, header: Header, confidence: bool = True,
                          overlay: bool = True) -> dict[str, Image]:
    """The segmentation outputs of one frame that were computed (and are wanted), by topic name."""
    out = {"class_ids": mono8_image(header, result.class_ids)}
    if confidence and result.confidence_u8 is not None:
        out["confidence"] = mono8_image(header, result.confidence_u8)
    if result.confidence is not None:
        h, w, step, data, big = codec.float32c1(result.confidence)
        out["confidence_float"] = image_msg(header, "32FC1", h, w, step, data, big)
    if overlay and result.overlay is not None:
        out["overlay"] = image_msg(header, "rgb8", *codec.rgb8(result.overlay))
    return out


def classification_messages(result: Result, class_names: Sequence[str], header: Header,
                            vision_msgs: Optional[Any] = None) -> dict[str, Any]:
    """``classification_json`` (``std_msgs/String``) and, where installed, ``vision_msgs/Classification``."""
    payload = classification_payload(result, class_names, stamp_ns(header), header.frame_id)
    out: dict[str, Any] = {"classification_json": String(data=json.dumps(payload))}
    if vision_msgs is not None:
        msg = vision_msgs.Classification()
        msg.header = header
        msg.results = [vision_msgs.ObjectHypothesis(class_id=str(t["class_id"]), score=float(t["score"]))
                       for t in payload["top_k"]]
        out["classification"] = msg
    return out


def quality_message(header: Header, status: dict[str, Any]) -> Any:
    """A frame's ``quality`` (``runtime.diagnostics.quality_status``) as ``diagnostic_msgs/DiagnosticArray``
    with the input's header (stamp and frame_id unchanged)."""
    st = DiagnosticStatus(level=bytes([int(status["level"])]), name=status["name"], message=status["message"],
                          hardware_id=status["hardware_id"])
    st.values = [KeyValue(key=k, value=v) for k, v in status["values"]]
    return DiagnosticArray(header=Header(stamp=header.stamp, frame_id=header.frame_id), status=[st])


def label_info(class_names: Sequence[str], stamp: Any, vision_msgs: Any) -> Any:
    """``vision_msgs/LabelInfo`` of the class names (latched beside ``class_names``)."""
    info = vision_msgs.LabelInfo()
    info.header.stamp = stamp
    info.class_map = [vision_msgs.VisionClass(class_id=i, class_name=n) for i, n in enumerate(class_names)]
    info.threshold = 0.0
    return info
