"""Frames between the camera callback and the model: the newest-frame mailbox and the worker thread
that drains it, so the executor thread only stores a frame and inference runs off it.

Pure Python and bounded (one frame waits at most), whatever the camera rate.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional


class LatestSlot:
    """A one-item mailbox: ``put`` replaces an item not yet taken (that frame is dropped).

    This is how a perception node stays current when the model is slower than the camera: the worker
    always gets the newest frame and queues never build up.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store ``item``; return True when it replaced an unprocessed one (a drop)."""
        with self._cond:
            dropped = self._full
            self._item, self._full = item, True
            self._cond.notify()
            return dropped

    def take(self, timeout: Optional[float] = None) -> Any:
        """Newest item, or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if not self._full and not self._closed:
                self._cond.wait(timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def clear(self) -> bool:
        with self._cond:
            had, self._item, self._full = self._full, None, False
            return had

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class FrameWorker:
    """One daemon thread that hands each newest frame to ``handle``; an exception in one frame is
    passed to ``on_error`` and the worker goes on. ``stop`` is idempotent."""

    def __init__(self, handle: Callable[[Any], None], on_error: Callable[[BaseException], None],
                 name: str = "tta_worker") -> None:
        self.slot = LatestSlot()
        self._handle, self._on_error = handle, on_error
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Any) -> bool:
        """Offer a frame; True when it replaced one not yet taken (a drop)."""
        return self.slot.put(item)

    def _run(self) -> None:
        while True:
            item = self.slot.take(timeout=0.5)
            if item is None:
                if self.slot.closed:
                    return
                continue
            try:
                self._handle(item)
            except Exception as err:  # never let one frame kill the worker
                self._on_error(err)

    def stop(self, timeout: float = 30.0) -> None:
        self.slot.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)
