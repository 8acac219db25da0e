"""Streaming protocol for robots: one frame at a time, a prediction per frame, immediately.

Design
------
Inference and adaptation work on different copies of the weights, so a prediction never waits
for an adaptation step (issue 3 §3):

* **Double-buffered inference weights.** The adapter keeps two copies (``A``/``B``) of the modules
  the method predicts with (``method.inference_modules()``: the student, the teacher for
  DPLOT/RMT/CoTTA). ``predict`` takes the *active* copy under a lock held only to read an index and
  bump a use count, then runs the forward pass outside the lock. After each adaptation step the
  worker copies the method's fresh weights into the *inactive* copy (waiting only, if ever, for an
  in-flight prediction that still uses that copy) and flips the active index. No weight copy and no
  adaptation work is ever on the inference path.
* **Single-frame BatchNorm** (``bn_stats``). The methods normalise with batch statistics while
  adapting and, as a side effect, keep an EMA of *test* statistics in the BN running buffers
  (``bn_momentum``, see ``model_utils``); those are published with the weights.

  - ``"running"``: the inference copies run BN in eval mode on those EMA statistics, so a frame is
    normalised with statistics of the recent frames, never with its own. Needed for
    classification, where one small image has no usable statistics; but the EMA lags a weather
    change by tens of adaptation steps.
  - ``"frame"``: each frame is normalised with its own statistics (BN in train mode, buffers
    untouched): the reference framework's batch-size-1 protocol for segmentation (CarlaTTA), where
    a frame has tens of thousands of pixels per channel. No lag: on the embedded world this alone
    lifts the source weights from 7-11 to 28-40 mIoU in rain and fog.
  - ``"auto"`` (default): ``"frame"`` for segmentation methods that adapt, else ``"running"``. The
    ``source`` method never adapts and always predicts with the source statistics.
* **Bounded window, no queue.** Frames go into a ``deque(maxlen=window)``. Every ``adapt_every``
  frames an adaptation of the method on the whole window (as a batch, the reference framework's
  sliding-window protocol for batch size 1) is *requested*. A request is a flag, not a queue entry:
  while a step is running, further requests coalesce into one (counted in ``coalesced``), and the
  next step uses the window as it is then. Memory is bounded by the window and the two copies.
* **Background worker.** ``background=True``: one daemon thread runs ``method.step`` (on its own
  CUDA stream on GPU, synchronised before publishing). On a CPU the worker competes with inference
  for the same cores; ``adapt_nice`` lowers the worker's scheduling priority (Linux ``nice`` is per
  thread; the worker's OpenMP team inherits it) and ``adapt_threads`` gives it its own intra-op
  thread count, so predictions keep the cores they need and adaptation uses what is left. ``background=False``: the step runs inline
  after the prediction — deterministic, for tests and benchmarks; the returned prediction is still
  the one made *before* adapting on the frame, as in the background mode. With ``on_request`` set,
  an inline request calls it instead, and it decides whether and when to step (``adapt_now``) and
  when the new weights become visible (``publish``): ``bench --realtime``'s simulated clock.

``predict(frame)``: frame (3, H, W) or (1, 3, H, W) float in [0, 1]; returns logits without/with the
leading batch axis accordingly ((C,) / (C, H, W) or (1, C) / (1, C, H, W)).

* **Video** (``docs/video.md``). ``predict(frame, motion=...)`` takes the frame's motion from the
  previous frame of the stream (``engine.temporal.FlowChain``, computed once by the caller, which
  may also fuse outputs with it). Each frame in the window keeps its motion and a serial number; a
  method that uses motion (``method.uses_motion``: DPLOT ``temporal_pl``) receives both
  (``method.set_motion``) just before its step, so it can tell which window frames are consecutive
  (serials one apart) and warp between them. ``reset`` restarts the serials' chain.
"""
from __future__ import annotations

import collections
import copy
import os
import threading
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.autograd.profiler import record_function

from .base import TTAMethod
from .handover import Handover
from .model_utils import copy_into, is_cuda_oom, set_bn_mode

STATE_FORMAT = "tta_perception.engine.streaming/1"
#: what ``predict`` runs: the method's own prediction (DPLOT: student + teacher on both views, as
#: the paper), or one forward pass of the student or of the EMA teacher (cheaper, for real time)
PREDICT_MODES = ("method", "student", "teacher")
#: how the inference copies normalise a frame (see "Single-frame BatchNorm" above)
BN_STATS = ("auto", "frame", "running")
#: arithmetic of the step and the prediction: float32, or bfloat16 autocast (GPU; measured by
#: ``bench.gpu``)
PRECISIONS = ("fp32", "bf16")



class StreamingAdapter:
    """Predict each frame at once with the latest published weights; adapt on a window."""

    def __init__(self, method: TTAMethod, window: int = 16, adapt_every: int = 1, background: bool = True,
                 min_window: int = 2, predict_mode: str = "method", adapt_nice: int = 0,
                 adapt_threads: int = 0, bn_stats: str = "auto", precision: str = "fp32",
                 channels_last: bool = False, handover_api: Any = None, domains: Any = None):
        if window < 1 or adapt_every < 1 or not (1 <= min_window <= window):
            raise ValueError("need window >= 1, adapt_every >= 1 and 1 <= min_window <= window")
        if predict_mode not in PREDICT_MODES:
            raise ValueError(f"predict_mode must be one of {', '.join(PREDICT_MODES)} ('method': the "
                             f"method's own prediction), got {predict_mode!r}")
        if predict_mode != "method":
            key = "model" if predict_mode == "student" else "teacher"
            if key not in method.inference_modules():
                raise ValueError(f"predict_mode={predict_mode!r}: method {method.name!r} has no {predict_mode}")
        if bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats must be one of {', '.join(BN_STATS)}, got {bn_stats!r}")
        if bn_stats == "auto":
            bn_stats = "frame" if (method.ADAPTS and method.task == "seg") else "running"
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if not 0 <= int(adapt_nice) <= 19:
            raise ValueError(f"adapt_nice must be in 0..19, got {adapt_nice}")
        if int(adapt_threads) < 0:
            raise ValueError(f"adapt_threads must be >= 0 (0: torch's default), got {adapt_threads}")
        self.method = method
        self.window = int(window)
        self.adapt_every = int(adapt_every)
        self.background = bool(background)
        self.min_window = int(min_window)
        self.predict_mode = predict_mode
        self.adapt_nice = int(adapt_nice)
        self.bn_stats = bn_stats
        self.adapt_threads = int(adapt_threads)
        self.precision = precision
        self.channels_last = bool(channels_last)
        if self.channels_last:
            for m in method.modules.values():
                m.to(memory_format=torch.channels_last)
        self._frames: collections.deque[torch.Tensor] = collections.deque(maxlen=self.window)
        # per window frame: its serial number and motion from the previous frame (video; see above)
        self._motions: collections.deque[Any] = collections.deque(maxlen=self.window)
        self._serials: collections.deque[int] = collections.deque(maxlen=self.window)
        self._serial = 0
        self._enabled = True
        self._lock = threading.Lock()                  # guards the fields below (short sections only)
        self._buffers_free = threading.Condition(self._lock)
        self._adapt_lock = threading.RLock()           # serialises method.step / reset / state access
        self._wake = threading.Condition(threading.Lock())
        self._pending = False
        self._busy = False
        self._closed = False
        self._since_adapt = 0
        self._copies = [self._make_copy(), self._make_copy()]
        self.domains = domains  # engine.domains.DomainMemory: resume what was learned in a known domain
        if domains is not None:
            domains.watch(self._copies)
        self._active = 0
        self._in_use = [0, 0]
        self._counters: dict[str, Any] = {
            "frames": 0, "adapt_requests": 0, "adapt_steps": 0, "coalesced": 0, "errors": 0,
            "last_error": "", "last_predict_ms": float("nan"), "mean_predict_ms": float("nan"),
            "last_adapt_ms": float("nan"), "mean_adapt_ms": float("nan"), "publishes": 0,
            "worker_nice": 0, "worker_threads": 0, "worker_warning": "",
            "oom_window_reductions": 0, "oom_cpu_fallbacks": 0,
        }
        # adaptation on its own CUDA stream, meeting inference only through events (see handover)
        self._handover = Handover(self.method.device, api=handover_api) if self.background else Handover("cpu")
        self._oom_window = self.window  # frames a step may use (halved after CUDA out-of-memory)
        #: inline mode: called for each adaptation request instead of stepping at once (bench --realtime)
        self.on_request: Callable[[], Any] | None = None
        self._thread: threading.Thread | None = None
        if self.background:
            self._ready = threading.Event()
            self._thread = threading.Thread(target=self._worker, name="tta-adapt", daemon=True)
            self._thread.start()
            # the worker sets its priority/threads (and briefly torch's global thread count) first:
            # nothing else of ours runs torch before that is done
            self._ready.wait(10.0)

    # ------------------------------------------------------------------ inference path
    @torch.no_grad()
    def predict(self, frame: torch.Tensor, motion: Any = None) -> torch.Tensor:
        """Prediction for ``frame`` with the current weights; never waits for adaptation.
        ``motion``: its ``engine.temporal.Motion`` from the previous frame, None where the chain broke."""
        squeeze = frame.dim() == 3
        x = frame.unsqueeze(0) if squeeze else frame
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"expected a frame (3, H, W) or (1, 3, H, W), got {tuple(frame.shape)}")
        out = self.predict_batch(x, motions=[motion])
        return out[0] if squeeze else out

    @torch.no_grad()
    def predict_batch(self, frames: torch.Tensor, adapt: Sequence[bool] | None = None,
                      motions: Sequence[Any] | None = None) -> torch.Tensor:
        """Predictions for a batch of frames (N, 3, H, W) in one forward pass: the newest frame of
        each of N cameras. With ``bn_stats='frame'`` each frame keeps its own BatchNorm statistics
        (``PerFrameBatchNorm2d``), so the result equals N single-frame predictions. The frames whose
        ``adapt`` flag is set (default: all) join the adaptation window in order and count towards
        ``adapt_every``; the others are only predicted. Domain memory observes the first frame.
        ``motions[i]``: frame i's motion from its camera's previous frame (temporal pseudo-labels);
        several cameras interleave in the window, so a batch of more than one frame passes none."""
        if self._closed:
            raise RuntimeError("StreamingAdapter is closed")
        x = frames
        if x.dim() != 4 or x.shape[0] < 1 or x.shape[1] != 3:
            raise ValueError(f"expected frames (N, 3, H, W), got {tuple(frames.shape)}")
        flags = [True] * x.shape[0] if adapt is None else [bool(a) for a in adapt]
        if len(flags) != x.shape[0]:
            raise ValueError(f"adapt has {len(flags)} flags for {x.shape[0]} frames")
        if not x.is_floating_point():
            raise ValueError(f"expected float images in [0, 1], got dtype {x.dtype}")
        x = x.to(self.method.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        with self._lock:
            idx = self._active
            self._in_use[idx] += 1
        try:
            self._handover.before_predict(idx)  # the weights published into this copy are written
            mods = self._copies[idx]
            with self._autocast():
                if self.predict_mode == "student":
                    out = mods["model"](x)
                elif self.predict_mode == "teacher":
                    out = mods["teacher"](x)
                else:
                    out = self.method.predict_with(mods, x)
            out = out.float()
            self._handover.predicted_with(idx)  # the copy may be overwritten once this ran
        finally:
            with self._lock:
                self._in_use[idx] -= 1
                self._buffers_free.notify_all()
        ms = (time.perf_counter() - t0) * 1e3
        if self.domains is not None:
            self.domains.observe()  # a switch it decides waits for the next adaptation step
        request = False
        with self._lock:
            c = self._counters
            c["frames"] += 1
            c["last_predict_ms"] = ms
            c["mean_predict_ms"] = ms if c["frames"] == 1 else c["mean_predict_ms"] + (ms - c["mean_predict_ms"]) / c["frames"]
            for i in (i for i, a in enumerate(flags) if a):
                self._frames.append(x[i].detach().clone())
                self._serial += 1
                self._serials.append(self._serial)
                self._motions.append(motions[i] if motions is not None else None)
                if self._enabled:
                    self._since_adapt += 1
            if any(flags):
                self._handover.frames_written()
            if self._enabled and self._since_adapt >= self.adapt_every and len(self._frames) >= self.min_window:
                self._since_adapt = 0
                request = True
                c["adapt_requests"] += 1
        if request:
            if self.background:
                with self._wake:
                    if self._pending:  # an earlier request not started yet: merge into it
                        with self._lock:
                            self._counters["coalesced"] += 1
                    self._pending = True
                    self._wake.notify()
            elif self.on_request is not None:
                self.on_request()
            else:
                self._adapt_once()
        return out.detach()

    # ------------------------------------------------------------------ adaptation path
    def _setup_worker_thread(self) -> None:
        """Lower this (worker) thread's priority and set its own intra-op thread count."""
        warnings = []
        if self.adapt_nice and self.method.device.type == "cpu":
            try:  # Linux: nice is per thread; threads this one starts (its OpenMP team) inherit it
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.adapt_nice)
            except (AttributeError, OSError) as e:
                warnings.append(f"adapt_nice not applied ({type(e).__name__}: {e})")
        if self.adapt_threads:
            default = torch.get_num_threads()
            torch.set_num_threads(self.adapt_threads)  # this thread's OpenMP count, and the global
            # ... whose global part would leak into threads that start torch later (the node's
            # inference thread): restore it from a throw-away thread, keeping ours.
            restore = threading.Thread(target=torch.set_num_threads, args=(default,))
            restore.start()
            restore.join()
        with self._lock:
            c = self._counters
            try:
                c["worker_nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            except (AttributeError, OSError):
                c["worker_nice"] = 0
            c["worker_threads"] = torch.get_num_threads()
            c["worker_warning"] = "; ".join(warnings)

    def _worker(self) -> None:
        try:
            self._setup_worker_thread()
        finally:
            self._ready.set()
        while True:
            with self._wake:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                self._pending = False
                self._busy = True
            try:
                self._adapt_once()
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    def _autocast(self):
        """bf16 autocast for the step and the prediction when asked for (``precision``)."""
        return torch.autocast(self.method.device.type, dtype=torch.bfloat16,
                              enabled=self.precision == "bf16")

    def adapt_now(self, publish: bool = True) -> bool:
        """One adaptation step on the window as it is, on the calling thread; True if it ran.
        ``publish=False`` keeps predictions on the previous weights until :meth:`publish`."""
        return self._adapt_once(publish)

    def publish(self) -> None:
        """Make the method's current weights the ones predictions use."""
        with self._adapt_lock:
            self._publish()

    def _adapt_once(self, publish: bool = True) -> bool:
        with self._adapt_lock:
            if not self._enabled:
                return False
            with self._lock:
                frames = list(self._frames)
                serials, motions = list(self._serials), list(self._motions)
            if len(frames) < self.min_window:
                return False
            t0 = time.perf_counter()
            while True:
                use = frames[-self._oom_window:]
                if getattr(self.method, "uses_motion", False):
                    self.method.set_motion(serials[-len(use):], motions[-len(use):])
                try:
                    with self._handover.step(use):
                        batch = torch.stack(use)
                        if self.domains is not None and self.domains.pending is not None:
                            self.domains.switch(self.method, batch)  # between steps, off the inference path
                        with self._autocast():
                            self.method.step(batch)
                        if publish:
                            self._publish()
                    self._handover.finish_step()
                    break
                except Exception as e:  # keep the robot running; surface it in stats()
                    if is_cuda_oom(e) and self._on_oom():
                        continue  # again, on a smaller window or on the CPU
                    with self._lock:
                        self._counters["errors"] += 1
                        self._counters["last_error"] = f"{type(e).__name__}: {e}"
                    return False
            ms = (time.perf_counter() - t0) * 1e3
            with self._lock:
                c = self._counters
                c["adapt_steps"] += 1
                c["last_adapt_ms"] = ms
                n = c["adapt_steps"]
                c["mean_adapt_ms"] = ms if n == 1 else c["mean_adapt_ms"] + (ms - c["mean_adapt_ms"]) / n
            return True

    def _on_oom(self) -> bool:
        """CUDA out of memory during a step: halve the frames a step uses; at one frame, move the
        method and the inference copies to the CPU. False when nothing smaller is left (counted)."""
        if self.method.device.type == "cuda":
            torch.cuda.empty_cache()
        if self._oom_window > 1:
            self._oom_window = max(1, self._oom_window // 2)
            with self._lock:
                self._counters["oom_window_reductions"] += 1
            return True
        if self.method.device.type != "cpu":
            self.to(torch.device("cpu"))
            with self._lock:
                self._counters["oom_cpu_fallbacks"] += 1
            return True
        return False

    def to(self, device: torch.device) -> None:
        """Move the method, its inference copies and the window to ``device`` (between steps)."""
        with self._adapt_lock:
            with self._lock:
                while self._in_use[0] or self._in_use[1]:
                    self._buffers_free.wait()
                self.method.to(device)
                for copy_ in self._copies:
                    for m in copy_.values():
                        m.to(device)
                frames = [f.to(device) for f in self._frames]
                self._frames.clear()
                self._frames.extend(frames)
                self._handover = Handover(device) if self.background else Handover("cpu")

    def _make_copy(self) -> dict[str, nn.Module]:
        mods = {k: copy.deepcopy(m) for k, m in self.method.inference_modules().items()}
        for m in mods.values():
            # eval BN on the running (EMA-of-test) statistics, or the frame's own (buffers untouched)
            set_bn_mode(m, "frame" if self.bn_stats == "frame" else "source")
            m.requires_grad_(False)
        return mods

    @torch.no_grad()
    @record_function("tta::publish")
    def _publish(self) -> None:
        """Copy the method's weights into the inactive copy, then make it the active one. On CUDA
        the copy runs on the adaptation stream after the last prediction that read that copy, and
        the next prediction on it waits for the copy: events, not a device synchronisation."""
        with self._lock:
            target = 1 - self._active
            while self._in_use[target]:
                self._buffers_free.wait()  # only an in-flight predict on the old copy
        src = self.method.inference_modules()
        with self._handover.step():
            self._handover.before_overwrite(target)
            dst_t: list[torch.Tensor] = []
            src_t: list[torch.Tensor] = []
            for k, m in self._copies[target].items():  # same architecture: same order of tensors
                dst_t += [*m.parameters(), *m.buffers()]
                src_t += [t.detach() for t in (*src[k].parameters(), *src[k].buffers())]
            copy_into(dst_t, src_t)  # one fused copy, not a state_dict round trip per module
            self._handover.published(target)
        with self._lock:
            self._active = target
            self._counters["publishes"] += 1

    # ------------------------------------------------------------------ control
    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no adaptation is pending or running (tests, benchmarks, shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wake:
            while self._pending or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._wake.wait(left)
        return True

    def set_enabled(self, enabled: bool) -> None:
        """Pause/resume adaptation; predictions continue with the current weights."""
        with self._lock:
            self._enabled = bool(enabled)
            self._since_adapt = 0

    @property
    def enabled(self) -> bool:
        return self._enabled

    def reset(self) -> None:
        """Back to the source state; waits for a running step to finish (not for predictions)."""
        with self._adapt_lock:
            with self._wake:
                self._pending = False
            self.method.reset()
            with self._lock:
                self._clear_window()
                self._since_adapt = 0
            self._publish()
            self._publish()  # both copies hold the source state

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._counters)
            out.update(enabled=self._enabled, window_len=len(self._frames), window=self.window,
                       adapt_every=self.adapt_every, background=self.background,
                       predict_mode=self.predict_mode, bn_stats=self.bn_stats,
                       busy=self._busy, pending=self._pending)
        out["method"] = self.method.stats
        if self.domains is not None:
            out.update(self.domains.stats())
        return out

    def state_dict(self) -> dict[str, Any]:
        with self._adapt_lock:
            state = {"format": STATE_FORMAT, "method_state": self.method.state_dict(), "counters": self.stats()}
            if self.domains is not None:
                state["domains"] = self.domains.state_dict()
            return state

    def load_state_dict(self, state: dict[str, Any], stats: bool = True) -> None:
        """``stats=False`` keeps this run's counters (the collapse guard going back to a healthy state)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError("not a StreamingAdapter state")
        with self._adapt_lock:
            self.method.load_state_dict(state["method_state"], stats=stats)
            if self.domains is not None and "domains" in state:
                self.domains.load_state_dict(state["domains"])
            with self._lock:
                self._clear_window()
            self._publish()
            self._publish()

    def _clear_window(self) -> None:
        """Empty the window (caller holds ``_lock``); the next frame starts a new chain of serials."""
        self._frames.clear()
        self._serials.clear()
        self._motions.clear()
        self._serial += 1

    def stream_state(self) -> dict[str, Any]:
        """The frame window, the frames since the last request and the counters: with
        ``state_dict`` everything needed to continue a stream exactly where it stopped (replay
        checkpoints). Tensors on the CPU; loadable with ``weights_only=True``."""
        with self._lock:
            counters = {k: v for k, v in self._counters.items()
                        if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
            return {"format": STATE_FORMAT, "frames": [f.detach().cpu().clone() for f in self._frames],
                    "since_adapt": int(self._since_adapt), "counters": counters}

    def load_stream_state(self, state: dict[str, Any]) -> None:
        """Restore what ``stream_state`` saved (after ``load_state_dict``, which clears the window)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError("not a StreamingAdapter stream state")
        with self._lock:
            self._clear_window()
            for f in state["frames"][-self.window:]:  # motions are not saved: no temporal view for these
                self._frames.append(f.to(self.method.device))
                self._serial += 1
                self._serials.append(self._serial)
                self._motions.append(None)
            self._since_adapt = int(state["since_adapt"])
            for k, v in state.get("counters", {}).items():
                if k in self._counters and not k.startswith("worker_"):
                    self._counters[k] = v

    def close(self) -> None:
        """Stop the worker (finishes a running step first). Idempotent."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def __enter__(self) -> "StreamingAdapter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
