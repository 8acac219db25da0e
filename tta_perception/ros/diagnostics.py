"""Reading a ``tta_node``'s ``/diagnostics`` from another participant (the benchmarks, tools): the
node's own status, told apart from the per-camera statuses a multi-camera node adds (the names are
``runtime.diagnostics``'s, which the node builds its statuses with)."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from ..runtime.diagnostics import camera_of, is_node_status


def node_values(msg: Any, ns: str) -> Optional[dict[str, str]]:
    """The key/values of the node status in namespace ``ns`` in a DiagnosticArray (None if absent)."""
    for status in msg.status:
        if is_node_status(status.name, ns):
            return {kv.key: kv.value for kv in status.values}
    return None


def camera_values(msg: Any, ns: str) -> dict[str, dict[str, str]]:
    """Camera name -> key/values of each camera status of the node in ``ns``."""
    out = {}
    for status in msg.status:
        camera = camera_of(status.name, ns)
        if camera is not None:
            out[camera] = {kv.key: kv.value for kv in status.values}
    return out


class Watch:
    """The newest node status of ``ns`` (``values``), how many arrived (``count``), and waits."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.values: dict[str, str] = {}
        self.cameras: dict[str, dict[str, str]] = {}
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, msg: Any) -> None:
        values = node_values(msg, self.ns)
        if values is None:
            return
        with self._lock:
            self.values = values
            self.cameras = camera_values(msg, self.ns) or self.cameras
            self.count += 1

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def counter(self, key: str) -> int:
        return int(float(self.values.get(key, 0) or 0))

    def fresh(self, alive: Callable[[], None] = lambda: None, timeout: float = 10.0) -> bool:
        """Wait for two statuses newer than now (counters read after what was sent)."""
        seen, deadline = self.count, time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive()
            if self.count >= seen + 2:
                return True
            time.sleep(0.02)
        return False
