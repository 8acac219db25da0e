"""Frames between the camera callbacks and the model: the newest-frame mailbox of each camera and the
worker thread that drains them, so the executor thread only stores a frame and inference runs off it.

Pure Python and bounded (one frame per camera waits at most), whatever the camera rates.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Sequence


class CameraSlots:
    """One newest-frame mailbox per camera behind one condition: ``take_all`` returns the pending
    frame of every camera that has one, in the cameras' order, and never waits for a camera that is
    late or silent. A camera that floods only replaces its own frame (counted as its drop)."""

    def __init__(self, cameras: Sequence[str]) -> None:
        self._order = {c: i for i, c in enumerate(cameras)}
        self._cond = threading.Condition()
        self._items: dict[str, Any] = {}
        self._closed = False

    def put(self, camera: str, item: Any) -> bool:
        """Store ``item`` as ``camera``'s newest frame; True when it replaced one not yet taken."""
        with self._cond:
            dropped = camera in self._items
            self._items[camera] = item
            self._cond.notify()
            return dropped

    def take_all(self, timeout: Optional[float] = None) -> list[tuple[str, Any]]:
        """[(camera, newest frame)] of every camera with a pending frame; [] after ``timeout``."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            items, self._items = self._items, {}
        return sorted(items.items(), key=lambda kv: self._order.get(kv[0], len(self._order)))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class FrameWorker:
    """One daemon thread that hands the newest frame of every camera with one to ``handle`` (a list
    of ``(camera, frame)``, one forward pass for them all); an exception is passed to ``on_error``
    and the worker goes on. ``stop`` is idempotent. One camera: ``cameras=("",)``."""

    def __init__(self, handle: Callable[[list[tuple[str, Any]]], None], on_error: Callable[[BaseException], None],
                 name: str = "tta_worker", cameras: Sequence[str] = ("",)) -> None:
        self.slot = CameraSlots(cameras)
        self._handle, self._on_error = handle, on_error
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Any, camera: str = "") -> bool:
        """Offer a frame; True when it replaced one of that camera not yet taken (a drop)."""
        return self.slot.put(camera, item)

    def _run(self) -> None:
        while True:
            items = self.slot.take_all(timeout=0.5)
            if not items:
                if self.slot.closed:
                    return
                continue
            try:
                self._handle(items)
            except Exception as err:  # never let one frame kill the worker
                self._on_error(err)

    def stop(self, timeout: float = 30.0) -> None:
        self.slot.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)
