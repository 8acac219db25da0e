"""The typed interface between node-bench's protocol (``bench.node``, ``bench.memory``) and its DDS
side (``ros.node_bench``): what a run is asked to do (``MethodSpec``, ``CameraSpec``, ``SweepStep``),
what the DDS side records of it (``OutputBook``, ``MethodRecord``, ``CameraRecord``,
``MemorySweep``, ``Overhead``) and the ``DdsSide`` it is asked through. The DDS side only publishes,
listens and samples; the statistics made of a record are ``bench.node_stats``. Nothing here imports
ROS, so the protocol and its statistics run and test without it.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence, Union

import numpy as np

from ..metrics import DomainScores, id_at, nearest_resize

#: a rendered frame: (rgb, labels, domain)
Frame = tuple
Log = Callable[[str], None]
NUM_CLASSES = 12
#: label flicker is scored on the first outputs only (bounded memory: 3,000 maps of 128x256 are 98 MB)
FLICKER_FRAMES = 3000
#: stamps kept waiting for their output: outputs older than 60 s at 10 Hz never come
PENDING_STAMPS = 600


def safe_tag(name: str) -> str:
    """A method name as a ROS namespace / file name part (``dplot+dm`` -> ``dplot_dm``)."""
    return "".join(c if c.isalnum() else "_" for c in name)


# ====================================================================== what a run is asked to do
@dataclass(frozen=True)
class NodeSpec:
    """Node processes fed ``n_frames`` frames at ``rate`` (``label``: the name in the report;
    ``method``: the node's engine method; ``node_params``: its further parameters)."""

    method: str
    label: str
    n_frames: int
    rate: float
    domain_id: int
    encoding: str = "bgra8"
    device: str = "cpu"
    node_params: dict[str, Any] = field(default_factory=dict)
    startup_timeout: float = 120.0
    drain_s: float = 2.0
    torch_threads: int = 0

    def params(self) -> dict[str, Any]:
        """The parameters every node process of the run starts with."""
        return {"method": self.method, "device": self.device, "diagnostics_period": 1.0, **self.node_params}


@dataclass(frozen=True)
class MethodSpec(NodeSpec):
    """One node process. ``window_s``: the first/last window compared for latency growth;
    ``cycle_frames``: published frames per weather cycle, to score each phase per cycle
    ('phase@cycle'); ``restart_at``: frame indices before which the node saves its state (``~/save``
    to ``save_path``), is killed with SIGKILL and restarts with ``resume_from`` (publishing waits
    meanwhile); ``publisher_qos``: the camera publisher's reliability."""

    window_s: float = 60.0
    cycle_frames: Optional[int] = None
    restart_at: tuple[int, ...] = ()
    save_path: str = ""
    publisher_qos: str = "reliable"

    def restart_frames(self) -> list[int]:
        """The frames a restart comes before, in order (within the run)."""
        return sorted({int(k) for k in self.restart_at if 0 < int(k) < self.n_frames})

    def cycle_key(self, k: int, domain: str) -> Optional[str]:
        return f"{domain}@{k // self.cycle_frames + 1}" if self.cycle_frames else None


@dataclass(frozen=True)
class CameraSpec(NodeSpec):
    """Several cameras. ``nodes``: node label -> its cameras (a list: the ``cameras`` parameter, topics
    ``C/image``; None: a single-camera node of the camera named by the label, topic ``image``)."""

    nodes: dict[str, Optional[list[str]]] = field(default_factory=dict)

    def cameras_of(self, node: str) -> list[str]:
        cams = self.nodes[node]
        return list(cams) if cams is not None else [node]


@dataclass(frozen=True)
class SweepStep:
    """One step of the memory sweep (``bench.memory``): the candidates are offered in turn until the
    node accepts one; frames of the model's input size (``"input"``) or of ``frame_size`` (H, W)."""

    name: str
    candidates: list[dict[str, Any]]
    frame_size: Union[str, tuple[int, int]] = "input"
    window: Optional[int] = None


# ====================================================================== what the DDS side records
class OutputBook:
    """The subscriber's book of one camera: the publish time and ground truth of every stamp sent,
    the latency of every output matched by stamp, the online confusion matrices, the node's
    diagnostics over time. Thread-safe (``lock``): the DDS callbacks write, the publisher reads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.t0_ns = time.monotonic_ns()  # "0 s": the first publish (``start``)
        self.truth: dict[int, tuple[np.ndarray, str, Optional[str], int]] = {}
        self.sent: dict[int, int] = {}
        self.scores = DomainScores(NUM_CLASSES)
        self.cycles = DomainScores(NUM_CLASSES)  # 'phase@cycle' keys (looping schedules, --cycles)
        self.domain_changes: list[tuple[int, int]] = []  # (stamp, detected id) from the ``domain`` topic
        self.matched_phases: list[tuple[int, str]] = []  # (stamp, true phase) of every scored output
        self.frame_scores: list[tuple[int, str, float]] = []  # (frame index, phase, the frame's mIoU %)
        self.samples: list[tuple[float, float]] = []  # (seconds since first publish, latency ms)
        self.matched: set[int] = set()
        self.unmatched = 0
        self.duplicates = 0
        self.stamps_out_of_order = 0
        self._last_stamp = -1
        self.diag: dict[str, str] = {}
        self.diag_timeline: list[dict[str, Any]] = []
        self.first_output = threading.Event()
        self.preds: dict[int, np.ndarray] = {}  # frame index -> class ids, for label flicker after the run

    def since_start(self, t_ns: int) -> float:
        return (t_ns - self.t0_ns) / 1e9

    def sending(self, stamp: int, labels: np.ndarray, domain: str, index: int, cycle_key: Optional[str] = None) -> None:
        """A frame is published now with this stamp and ground truth."""
        with self.lock:
            self.truth[stamp] = (labels, domain, cycle_key, index)
            self.sent[stamp] = time.monotonic_ns()  # publish time, recorded at send

    def forget_old(self) -> None:
        """Bounded: the oldest stamps beyond ``PENDING_STAMPS`` will not be answered any more."""
        if len(self.truth) > PENDING_STAMPS:
            with self.lock:
                for old in sorted(self.truth)[:len(self.truth) - PENDING_STAMPS]:
                    self.truth.pop(old, None)

    def output(self, stamp: int, t_recv_ns: int, labels_of: Callable[[], np.ndarray]) -> None:
        """An output with ``stamp`` arrived at ``t_recv_ns``; ``labels_of()`` decodes its class ids
        (only for an output that is scored)."""
        with self.lock:
            t_pub = self.sent.get(stamp)
            if t_pub is None or stamp not in self.truth:
                self.unmatched += 1
                return
            if stamp in self.matched:
                self.duplicates += 1
                return
            self.matched.add(stamp)
            if stamp < self._last_stamp:
                self.stamps_out_of_order += 1
            self._last_stamp = max(self._last_stamp, stamp)
            self.samples.append((self.since_start(t_pub), (t_recv_ns - t_pub) / 1e6))
            labels, domain, cycle_key, index = self.truth.pop(stamp)
        pred = labels_of()
        if pred.shape != labels.shape:
            pred = nearest_resize(pred, *labels.shape)
        with self.lock:
            frame = self.scores.add_frame(pred, labels, domain)
            self.frame_scores.append((index, domain, 100.0 * frame.miou()))
            if len(self.preds) < FLICKER_FRAMES:
                self.preds[index] = pred
            if cycle_key is not None:
                self.cycles.add_frame(pred, labels, cycle_key)
            self.matched_phases.append((stamp, domain))
        self.first_output.set()

    def domain_change(self, text: str) -> None:
        """Domain memory's ``domain`` topic: the detected id from the stamp of the frame it changed at."""
        try:
            info = json.loads(text)
            stamp = int(info["stamp"]["sec"]) * 1_000_000_000 + int(info["stamp"]["nanosec"])
            with self.lock:
                self.domain_changes.append((stamp, int(info["id"])))
        except (ValueError, KeyError, TypeError):
            pass

    def diagnostics(self, values: dict[str, str], keep: Sequence[str]) -> None:
        """The node's newest status; ``keep``: its keys kept over time."""
        with self.lock:
            self.diag = values
            self.diag_timeline.append({"t": self.since_start(time.monotonic_ns()),
                                       **{k: values.get(k) for k in keep}})

    def statuses(self) -> int:
        with self.lock:
            return len(self.diag_timeline)

    def detected_per_output(self) -> tuple[list[str], list[int]]:
        """True phase and detected domain id of every scored output after the detector's first
        report (the id in force at that frame's stamp)."""
        changes = sorted(self.domain_changes)
        stamps, ids = [s for s, _ in changes], [i for _, i in changes]
        pairs = [(phase, id_at(stamps, ids, stamp)) for stamp, phase in sorted(self.matched_phases)]
        return [p for p, i in pairs if i is not None], [i for _, i in pairs if i is not None]


@dataclass
class Restart:
    """A ``~/save``, SIGKILL and restart with ``resume_from`` before frame ``before_frame``."""

    before_frame: int
    save_s: float
    save_message: str
    killed_exit_code: Optional[int]
    restart_s: float
    pid: int
    domains_known_before: Optional[str]
    domains_known_after: Optional[str]
    adaptation_steps_before: Optional[str]


@dataclass
class MethodRecord:
    """What the DDS side observed of one ``MethodSpec`` run."""

    namespace: str
    command: list[str]
    node_env: dict[str, str]
    book: OutputBook
    publish_wall_s: float = 0.0
    late_publish_ticks: int = 0
    rss_ready_mb: float = float("nan")
    rss_end_mb: float = float("nan")
    rss_timeline: list[tuple[float, float]] = field(default_factory=list)
    restarts: list[Restart] = field(default_factory=list)
    #: the last /diagnostics of each node process a restart ended (its counters count on in the next)
    ended: list[dict[str, str]] = field(default_factory=list)
    node_exit_code: Optional[int] = None
    node_log_tail: list[str] = field(default_factory=list)


@dataclass
class NodeUse:
    """One node process of a camera run: CPU seconds while publishing, RSS, its last node status."""

    pid: int
    cpu_s: float
    rss_ready_mb: float
    status: dict[str, str]


@dataclass
class CameraRecord:
    """What the DDS side observed of one ``CameraSpec`` run (``books``: per camera)."""

    cameras: list[str]
    books: dict[str, OutputBook]
    nodes: dict[str, NodeUse] = field(default_factory=dict)
    publish_wall_s: float = 0.0
    late_publish_ticks: int = 0
    rss_timeline: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    node_log_tail: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class StepRun:
    """What an accepted memory-sweep configuration did: frames until it predicted and adapted, RSS."""

    frames_sent: int
    frame_size: list[int]
    input_size: Optional[str]
    method: Optional[str]
    window: Optional[int]
    adaptation_steps: int
    frames_processed: int
    rss_peak_mb: float
    rss_end_mb: float
    seconds: float
    reload_failures: int


@dataclass
class StepRecord:
    """One memory-sweep step: what was refused (with the reason), what ran (None: every candidate
    refused; then only the RSS after)."""

    name: str
    refused: list[dict[str, Any]] = field(default_factory=list)
    params: Optional[dict[str, Any]] = None
    ran: Optional[StepRun] = None
    rss_end_mb: float = float("nan")

    def row(self) -> dict[str, Any]:
        out = {"name": self.name, "refused": self.refused, "params": self.params, "accepted": self.ran is not None}
        return {**out, **asdict(self.ran)} if self.ran is not None else {**out, "rss_end_mb": self.rss_end_mb}


@dataclass
class MemorySweep:
    baseline_rss_mb: float
    steps: list[StepRecord]
    node_exit_code: Optional[int]
    node_log_tail: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"baseline_rss_mb": self.baseline_rss_mb, "steps": [s.row() for s in self.steps],
                "node_exit_code": self.node_exit_code, "node_log_tail": self.node_log_tail}


@dataclass
class Overhead:
    """Median ms per frame of each stage of the node's per-frame path, measured in one process;
    ``publish_ms`` NaN when nothing was published."""

    method: str
    size: list[int]
    encoding: str
    repeats: int
    outputs: list[str]
    torch_threads: int
    decode_ms: float
    to_input_ms: float
    model_forward_ms: float
    postprocess_ms: float
    messages_ms: float
    publish_ms: float

    def as_dict(self) -> dict[str, Any]:
        """With the issue's "conversion, publishing" (the image in, the messages out) and the whole
        overhead (with argmax / confidence / overlay / statistics on the logits), as % of the forward."""
        publish = 0.0 if np.isnan(self.publish_ms) else self.publish_ms
        conversion = self.decode_ms + self.to_input_ms + self.messages_ms + publish
        overhead = conversion + self.postprocess_ms
        fwd = self.model_forward_ms
        return {**asdict(self), "conversion_publishing_ms": conversion,
                "conversion_publishing_pct_of_model": 100.0 * conversion / fwd,
                "overhead_ms": overhead, "overhead_pct_of_model": 100.0 * overhead / fwd}


class DdsSide(Protocol):
    """What the protocol asks of the DDS side (``ros.node_bench`` is one)."""

    def measure_overheads(self, size: tuple[int, int], repeats: int, encoding: str, frame: np.ndarray,
                          domain_id: int, torch_threads: int = 0) -> dict[str, Overhead]: ...

    def run_method(self, spec: MethodSpec, frames: Sequence[Frame], log: Log) -> MethodRecord: ...

    def run_cameras(self, spec: CameraSpec, frames: dict[str, Sequence[Frame]], log: Log) -> CameraRecord: ...

    def run_memory_sweep(self, steps: Sequence[SweepStep], *, node_params: dict[str, Any], domain_id: int,
                         log: Log, torch_threads: int = 0, rate: float = 4.0, frames_per_step: int = 10,
                         step_timeout: float = 240.0, startup_timeout: float = 120.0) -> MemorySweep: ...
