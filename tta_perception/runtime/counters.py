"""The node's frame counters: the totals and, with several cameras, each camera's, kept apart from
the session so that counting a frame never needs the model or its locks."""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from . import image_codec as codec
from .errors import one_line
from .health import Health


class FrameCounters:
    """Totals (``health``), per camera (``cameras``: fixed at start-up), the last frame's mean
    confidence/entropy (``last``). ``reliability(camera)``: what the camera's subscription uses, for
    the one warning about frames lost before the node."""

    def __init__(self, cameras: list[str], log: Any, reliability: Callable[[str], str]) -> None:
        self.log, self._reliability = log, reliability
        self.health = Health()
        self.cameras = {c: Health() for c in cameras}
        self.warned_transport = False
        self.last: dict[str, float] = {"confidence": float("nan"), "entropy": float("nan")}

    def arrival(self, stamp_s: Optional[float] = None, camera: str = "", source: Any = None,
                seq: Optional[int] = None) -> None:
        """A frame arrived from ``camera`` (``stamp_s``: its header stamp; ``source``, ``seq``: its
        publisher and that publisher's sequence number where the RMW tells, see
        ``health.TransportLoss``). The first frames found lost before the node
        (``lost_in_transport``) are reported once, with the remedy."""
        cam = self.cameras.get(camera)
        if cam is None:
            lost = self.health.arrival(stamp_s=stamp_s, source=source, seq=seq)
        else:  # the frames of one camera make a chain; the node's total counts them all
            lost = cam.arrival(stamp_s=stamp_s, source=source, seq=seq)
            self.health.arrival()
            if lost:
                self.health.count("lost_in_transport", lost)
        if lost and not self.warned_transport:
            self.warned_transport = True
            reliability = self._reliability(camera)
            remedy = ("a best-effort publisher of large frames needs the shipped DDS profile in its own "
                      "process (dds_profile), or a reliable publisher" if reliability == "best_effort" else
                      "raise qos_depth and the DDS socket buffers (net.core.rmem_max)")
            self.log.warning(f"frames are lost before they reach the node ({lost} missing before this one, "
                             f"counted in lost_in_transport): large frames over {reliability} DDS; {remedy} "
                             f"(see the node documentation, 'Large frames')")

    def count(self, key: str, camera: str = "", n: int = 1) -> None:
        """A counter of the node, and of ``camera`` where there are several."""
        self.health.count(key, n)
        if camera in self.cameras:
            self.cameras[camera].count(key, n)

    def rejected(self, err: codec.ImageError, camera: str = "") -> None:
        """A frame that could not be decoded: counted by reason (and camera)."""
        self.count(err.reason, camera)
        where = f" from camera {camera!r}" if camera else ""
        self.log.warning(f"bad frame{where} ({err.reason}): {err}", throttle=True)

    def done(self, result: Any, t_arrival: float, model_s: float, camera: str = "") -> None:
        """Book-keeping once a frame's outputs are published."""
        if result.nonfinite:
            self.count("nonfinite_outputs", camera)
        self.last = {"confidence": result.mean_confidence, "entropy": result.mean_entropy}
        latency = time.monotonic() - t_arrival
        self.health.processed(latency, model_s)
        if camera in self.cameras:
            self.cameras[camera].processed(latency, model_s)

    def frame_failed(self, err: BaseException) -> None:
        self.health.count("inference_errors")
        self.log.error(f"frame failed: {type(err).__name__}: {one_line(err)}", throttle=True)
