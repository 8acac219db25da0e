"""The hand-over between inference and adaptation on a GPU: adaptation steps run on their own CUDA
stream so a prediction is never queued behind a step, and the two meet only through CUDA events
(a stream waits on an event on the GPU; the host never synchronises the device):

- a frame is appended to the window on the inference stream -> ``frames_written`` records an event;
  the step's stream waits for it before reading the window (``step``), and the frames it reads are
  marked as used by that stream (``record_stream``) so the allocator does not hand their memory out
  while the step still reads it;
- a prediction reads inference copy ``i`` -> ``predicted_with(i)`` records an event; before the
  step's stream overwrites copy ``i`` with new weights it waits for it (``before_overwrite``);
- the new weights are copied into copy ``i`` on the step's stream -> ``published(i)`` records an
  event; the next prediction that reads copy ``i`` makes the inference stream wait for it
  (``before_predict``).

On a CPU every call is a no-op. ``api`` is the ``torch.cuda`` module or, in tests, a fake with the
same four names (``Stream``, ``Event``, ``current_stream``, ``stream``), so the ordering is tested
without a GPU.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence


class Handover:
    def __init__(self, device: Any, copies: int = 2, api: Any = None) -> None:
        import torch

        self.enabled = getattr(device, "type", str(device)) == "cuda" or api is not None
        self.api = api if api is not None else (torch.cuda if self.enabled else None)
        self.stream = self.api.Stream(device=device) if self.enabled else None
        self._frames: Optional[Any] = None
        self._predicted: list[Optional[Any]] = [None] * copies
        self._published: list[Optional[Any]] = [None] * copies

    def _event(self, stream: Any) -> Any:
        event = self.api.Event()
        event.record(stream)
        return event

    # ---- inference side (the caller's current stream)
    def frames_written(self) -> None:
        if self.enabled:
            self._frames = self._event(self.api.current_stream())

    def before_predict(self, copy: int) -> None:
        if self.enabled and self._published[copy] is not None:
            self.api.current_stream().wait_event(self._published[copy])

    def predicted_with(self, copy: int) -> None:
        if self.enabled:
            self._predicted[copy] = self._event(self.api.current_stream())

    # ---- adaptation side (its own stream)
    @contextlib.contextmanager
    def step(self, frames: Sequence[Any] = ()) -> Iterator[None]:
        """Run an adaptation step on the adaptation stream, after the frames it reads were written."""
        if not self.enabled:
            yield
            return
        if self._frames is not None:
            self.stream.wait_event(self._frames)
        for f in frames:
            if getattr(f, "is_cuda", False):
                f.record_stream(self.stream)
        with self.api.stream(self.stream):
            yield

    def before_overwrite(self, copy: int) -> None:
        if self.enabled and self._predicted[copy] is not None:
            self.stream.wait_event(self._predicted[copy])

    def published(self, copy: int) -> None:
        if self.enabled:
            self._published[copy] = self._event(self.stream)

    def finish_step(self) -> None:
        """Wait (this thread only) until the adaptation stream is done: the step's time is then
        measured, and steps never pile up on the GPU faster than they run."""
        if self.enabled:
            self.stream.synchronize()
