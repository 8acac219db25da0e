"""Helpers of the ROS tests (no tests here): tiny models that follow the TTAModel contract, gates
that make "slow model" and "model reloading" deterministic, and an in-process DDS harness.

The tiny models are importable by ``architecture: test_ros_helpers:tiny_seg`` (the node's
'module:function' form) so a node in another process can build them too (PYTHONPATH = test/).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from tta_perception.models.base import Normalize, TTAModel

TEST_DIR = Path(__file__).resolve().parent
REPO = TEST_DIR.parent
MODULE = __name__  # 'test_ros_helpers' (or 'test.test_ros_helpers' under a package layout)

# Open gates by default; a test closes one to hold the model still, and always reopens it.
FORWARD_GATE = threading.Event()
FORWARD_GATE.set()
FORWARD_WAITING = threading.Event()
BUILD_GATE = threading.Event()
BUILD_GATE.set()
BUILD_WAITING = threading.Event()
GATE_TIMEOUT = 60.0

SEG_CLASSES = ("road", "sky", "vehicle")
CLS_CLASSES = ("stop", "yield", "speed_30", "speed_50", "no_entry", "ahead", "left", "right")


class _Block(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


class TinyNet(TTAModel):
    """Stem + two residual blocks with BatchNorm + 1x1 head; seg at 1/2 resolution or global pool."""

    candidate_blocks = ("block1", "block2")

    def __init__(self, task: str, classes: tuple[str, ...], nan_on_white: bool = False):
        super().__init__()
        self.task, self.class_names, self.num_classes = task, classes, len(classes)
        self.nan_on_white = nan_on_white
        self.norm = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = _Block(8)
        self.block2 = _Block(8)
        self.head = nn.Conv2d(8, len(classes), 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not FORWARD_GATE.is_set():
            FORWARD_WAITING.set()
            FORWARD_GATE.wait(GATE_TIMEOUT)
        f = self.block2(self.block1(self.stem(self.norm(x))))
        if self.nan_on_white:  # an all-white frame poisons the features: NaN logits and NaN loss
            white = x.flatten(1).amin(1) > 0.999
            f = torch.where(white[:, None, None, None], torch.full_like(f, float("nan")), f)
        return f if self.task == "seg" else f.mean((2, 3))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        if self.task == "seg":
            return self.head(features)
        return self.head(features[:, :, None, None])[:, :, 0, 0]


def _seeded(fn: Callable[[], TinyNet]) -> TinyNet:
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        return fn()
    finally:
        torch.random.set_rng_state(state)


def tiny_seg() -> TinyNet:
    return _seeded(lambda: TinyNet("seg", SEG_CLASSES))


def tiny_cls() -> TinyNet:
    return _seeded(lambda: TinyNet("cls", CLS_CLASSES))


def nan_seg() -> TinyNet:
    return _seeded(lambda: TinyNet("seg", SEG_CLASSES, nan_on_white=True))


def gated_seg() -> TinyNet:
    """Builder that waits on BUILD_GATE: a model reload that lasts until the test says so."""
    if not BUILD_GATE.is_set():
        BUILD_WAITING.set()
        BUILD_GATE.wait(GATE_TIMEOUT)
    return tiny_seg()


class _SlowNet(TinyNet):
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(1.5)  # a frame in flight when shutdown starts: the worker is still busy
        return super().forward_features(x)


def slow_seg() -> TinyNet:
    """A model that takes 1.5 s per forward (shutdown while a frame is in flight)."""
    return _seeded(lambda: _SlowNet("seg", SEG_CLASSES))


_BUILDS = {"exit": 0}


def exit_on_rebuild() -> TinyNet:
    """User code that calls sys.exit() when built a second time (a reload): must not wedge the node."""
    _BUILDS["exit"] += 1
    if _BUILDS["exit"] > 1:
        sys.exit(3)
    return tiny_seg()


REGISTERED_SEG = "ros_test_tiny_seg"  # registered by a test (monkeypatch) so a checkpoint can name it


def arch(name: str) -> str:
    return f"{MODULE}:{name}"


def frame(height: int = 32, width: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth random RGB frame (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3)).astype(np.uint8)
    return np.ascontiguousarray(base.repeat(4, 0).repeat(4, 1)[:height, :width])


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until truthy; fail after a generous ``timeout`` (never a pass criterion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def require_rclpy():
    """Skip when the ROS wheels are not installed; fail loudly when they are but cannot load."""
    try:
        import rclpy  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("rclpy not installed (pip install -e '.[ros]')", allow_module_level=True)
    except ImportError as err:  # installed but the shared libraries are not on the library path
        raise ImportError(f"{err}\nThe ROS 2 wheels set LD_LIBRARY_PATH by re-executing the "
                          "interpreter at start-up (ros_wheels_bootstrapper.pth); run the tests with "
                          "the venv's python (make test / .venv/bin/python -m pytest).") from err


class Collector:
    """A subscription that keeps every message, with waits that poll (thread-safe enough: append)."""

    def __init__(self, node, msg_type, topic: str, qos) -> None:
        self.messages: list[Any] = []
        self.sub = node.create_subscription(msg_type, topic, self.messages.append, qos)

    def wait(self, n: int = 1, timeout: float = 30.0, predicate: Callable[[Any], bool] | None = None):
        def ready():
            hits = [m for m in list(self.messages) if predicate is None or predicate(m)]
            return hits if len(hits) >= n else None

        return wait_until(ready, timeout, f"{n} message(s) on {self.sub.topic_name}")


class Harness:
    """One rclpy context, a multi-threaded executor spinning in the background and a client node."""

    def __init__(self) -> None:
        require_rclpy()
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import MultiThreadedExecutor

        self.rclpy = rclpy
        self.ctx = Context()
        rclpy.init(context=self.ctx)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.ctx)
        self.client = rclpy.create_node(f"tta_test_client_{os.getpid()}", context=self.ctx)
        self.executor.add_node(self.client)
        self.nodes: list[Any] = []
        self.errors: list[str] = []
        self._closing = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        self._count = 0

    def _spin(self) -> None:
        """Spin until shutdown; an exception in one callback (e.g. a node destroyed while the
        executor still held its entities) is recorded instead of silently ending the spin thread."""
        from rclpy.executors import ExternalShutdownException

        while self.ctx.ok() and not self._closing:
            try:
                self.executor.spin_once(timeout_sec=0.1)
            except ExternalShutdownException:
                return
            except Exception as err:  # noqa: BLE001 - keep spinning, report at close
                if self._closing:
                    return
                self.errors.append(f"{type(err).__name__}: {err}")

    def namespace(self) -> str:
        self._count += 1
        return f"/t{os.getpid()}_{self._count}"

    def node(self, namespace: str, start: bool = True, **params: Any):
        """A TTANode in ``namespace`` with parameter overrides; started (configure+activate)."""
        from rclpy.parameter import Parameter

        from tta_perception.ros.tta_node import TTANode

        params.setdefault("diagnostics_period", 0.2)
        params.setdefault("device", "cpu")
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        node = TTANode(namespace=namespace, context=self.ctx, parameter_overrides=overrides)
        self.nodes.append(node)
        self.executor.add_node(node)
        if start:
            node.start()
        return node

    def remove(self, node) -> None:
        node._stop_processing()
        node._free()
        self.executor.remove_node(node)
        node.destroy_node()
        self.nodes.remove(node)

    def call(self, srv_type, name: str, request, timeout: float = 30.0):
        cli = self.client.create_client(srv_type, name)
        try:
            wait_until(lambda: cli.wait_for_service(timeout_sec=0.1), timeout, f"service {name}")
            future = cli.call_async(request)
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            assert done.wait(timeout), f"no response from {name}"
            return future.result()
        finally:
            self.client.destroy_client(cli)

    def close(self) -> None:
        for node in list(self.nodes):
            self.remove(node)
        self._closing = True
        self._thread.join(timeout=10.0)
        self.executor.shutdown(timeout_sec=5.0)
        self.client.destroy_node()
        self.rclpy.try_shutdown(context=self.ctx)
        if self.errors:
            print("executor errors:", *self.errors[:5], sep="\n  ", file=sys.stderr)


@pytest.fixture(scope="module")
def harness():
    """One DDS harness per test module (import this fixture into the module)."""
    h = Harness()
    yield h
    h.close()


@pytest.fixture
def ros(harness):
    """The module's harness; nodes a test creates are removed after it, gates reopened."""
    yield harness
    FORWARD_GATE.set()
    BUILD_GATE.set()
    for node in list(harness.nodes):
        harness.remove(node)


def added_nodes(harness):
    """Body of a ``ros`` fixture for nodes other than tta_node: ``harness.add(node)`` spins it, and it
    is stopped (``stop()`` where it has one) and destroyed after the test (``yield from``)."""
    added = []

    def add(node):
        added.append(node)
        harness.executor.add_node(node)
        return node

    harness.add = add
    yield harness
    for node in added:
        if hasattr(node, "stop"):
            node.stop()
        harness.executor.remove_node(node)
        node.destroy_node()


def image_msg(rgb: np.ndarray, encoding: str = "rgb8", stamp=(12, 345), frame_id: str = "camera"):
    import array

    from sensor_msgs.msg import Image

    from tta_perception.runtime import image_codec

    h, w, step, data = image_codec.rgb_to_raw(rgb, encoding)
    msg = Image(height=h, width=w, encoding=encoding, step=step)
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    buf = array.array("B")
    buf.frombytes(data)
    msg.data = buf
    return msg


def raw_msg(encoding: str, height: int, width: int, step: int, data: bytes, stamp=(1, 0)):
    import array

    from sensor_msgs.msg import Image

    msg = Image(height=height, width=width, encoding=encoding, step=step)
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = "camera"
    buf = array.array("B")
    buf.frombytes(data)
    msg.data = buf
    return msg


def compressed_msg(data: bytes, fmt: str = "png", stamp=(1, 0)):
    import array

    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage(format=fmt)
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = "camera"
    buf = array.array("B")
    buf.frombytes(data)
    msg.data = buf
    return msg


def encode(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image as PILImage

    out = io.BytesIO()
    PILImage.fromarray(rgb).save(out, format=fmt)
    return out.getvalue()


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment of a node started in another process: it can import the test models."""
    env = dict(os.environ)
    paths = [str(TEST_DIR), str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


if str(TEST_DIR) not in sys.path:  # so 'test_ros_helpers:tiny_seg' resolves in this process too
    sys.path.insert(0, str(TEST_DIR))
