"""Where ``bench`` runs its cells (one method on one stream for one seed): in this process, one after
another (the default), or as Ray tasks (``bench --ray [ADDR]``, through ``fleet.cluster``: a local
Ray on this machine's cores, or a cluster).

The numbers do not depend on where a cell runs: ``runner.run_method`` builds the method on a fresh
copy of the source model and seeds everything from the cell's seed, and a Ray task pins torch to the
driver's thread count (results depend on it). The model, each stream, the bundle and the source
batches go into Ray's object store once and are shared by the cells; results come back in the order
the cells were submitted, so the report is the single-machine one. Only the timings differ (cells
share the machines: ms/frame and memory are then those of a loaded machine).

``bench --resume``: ``on_done(run, seconds)`` is called as soon as a cell finishes (Ray: when its
task returns, before the ordered ``on_result``), so the run can save it at once; a cell finished by
an earlier run is handed over with ``finished`` instead of running, in its place in the submission
order. Ray tasks take no checkpoints inside a cell (one interrupted on Ray runs again from its
start); finished cells are saved either way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from .runner import RunOptions, run_method


@dataclass
class Cell:
    method: str
    model: Any
    stream: Any
    opts: RunOptions
    bundle: Any = None
    fisher: Any = None
    warmup: Any = None
    threads: int = 1


def _resolve(value: Any) -> Any:
    """A value, or what a Ray object reference points to (inside a task)."""
    if type(value).__name__ == "ObjectRef":
        import ray

        return ray.get(value)
    return value


def run_cell(cell: Cell, report: Optional[Callable[[dict], None]] = None):
    """One cell (a Ray task's body): ``run_method`` with torch pinned to the driver's threads."""
    from ..fleet.cluster import pinned_threads

    with pinned_threads(cell.threads):
        return run_method(cell.method, _resolve(cell.model), _resolve(cell.stream), cell.opts,
                          bundle=_resolve(cell.bundle), fisher_batches=_resolve(cell.fisher),
                          rmt_warmup=_resolve(cell.warmup))


@dataclass
class _Done:
    """A finished cell loaded from an earlier run, waiting for its turn in :meth:`RayCells.drain`."""

    run: Any
    seconds: float


class LocalCells:
    """Each cell runs when submitted, here."""

    engine = "this process"

    def submit(self, method: str, model, stream, opts: RunOptions, *, bundle=None, fisher=None, warmup=None,
               on_result: Callable[[Any, float], None], on_done: Optional[Callable[[Any, float], None]] = None) -> None:
        t0 = time.perf_counter()
        r = run_method(method, model, stream, opts, bundle=bundle, fisher_batches=fisher, rmt_warmup=warmup)
        seconds = time.perf_counter() - t0
        if on_done is not None:
            on_done(r, seconds)
        on_result(r, seconds)

    def finished(self, run: Any, seconds: float, on_result: Callable[[Any, float], None]) -> None:
        """A cell an earlier run finished (``bench --resume``): its result, now."""
        on_result(run, seconds)

    def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


class RayCells:
    """Cells as Ray tasks: submitted at once, run as the cluster's CPUs allow, their results handed
    to ``on_result(run, seconds)`` in submission order when :meth:`drain` is called."""

    def __init__(self, address: Optional[str], threads: int, gpus: float = 0.0, progress: bool = True,
                 log: Callable[[str], None] = print):
        from ..fleet.cluster import Cluster, ClusterSettings

        self.cluster = Cluster(ClusterSettings(address=address, cpus=max(1, int(threads)), gpus=gpus), log)
        self.cluster.__enter__()
        if self.cluster.ray is None:
            self.cluster.__exit__(None, None, None)
            raise ValueError("--ray needs Ray: pip install 'tta_perception[fleet]' (or run without --ray)")
        self.threads, self.progress = max(1, int(threads)), progress
        self.engine = self.cluster.describe()
        self._shared: dict[int, tuple[Any, Any]] = {}  # id(object) -> (object, its reference)
        # (cell or a finished one, on_result, on_done)
        self._pending: list[tuple[Any, Callable[[Any, float], None], Optional[Callable[[Any, float], None]]]] = []

    def _put(self, obj: Any) -> Any:
        if obj is None:
            return None
        key = id(obj)
        if key not in self._shared:
            self._shared[key] = (obj, self.cluster.ray.put(obj))  # the object kept: its id stays unique
        return self._shared[key][1]

    def submit(self, method: str, model, stream, opts: RunOptions, *, bundle=None, fisher=None, warmup=None,
               on_result: Callable[[Any, float], None], on_done: Optional[Callable[[Any, float], None]] = None) -> None:
        cell = Cell(method, self._put(model), self._put(stream),
                    replace(opts, progress=False, progress_lines=False, checkpoint_dir=None),
                    self._put(bundle), self._put(fisher), self._put(warmup), self.threads)
        self._pending.append((cell, on_result, on_done))

    def finished(self, run: Any, seconds: float, on_result: Callable[[Any, float], None]) -> None:
        """A cell an earlier run finished: delivered in its place among the submitted ones."""
        self._pending.append((_Done(run, seconds), on_result, None))

    def drain(self) -> None:
        """Run every submitted cell; results to their callbacks in submission order."""
        from tqdm.auto import tqdm

        pending, self._pending = self._pending, []
        if not pending:
            return
        results = {i: (c.run, c.seconds) for i, (c, _, _) in enumerate(pending) if isinstance(c, _Done)}
        todo = [i for i in range(len(pending)) if i not in results]
        errors: dict[int, str] = {}
        bar = tqdm(total=len(todo), desc="bench cells (Ray)", unit="cell", disable=not self.progress or not todo)

        def done(j: int, result: Any, wall: float, error: Optional[str]) -> None:
            i = todo[j]
            results[i] = (result, wall)
            if error:
                errors[i] = error
            elif pending[i][2] is not None:
                pending[i][2](result, wall)  # saved as soon as it finished
            bar.update(1)

        try:
            if todo:
                self.cluster.run(run_cell, [pending[i][0] for i in todo], on_result=done)
        finally:
            bar.close()
        if errors:
            i = min(errors)
            raise RuntimeError(f"bench cell {pending[i][0].method} (seed {pending[i][0].opts.seed}) failed on Ray: "
                               f"{errors[i]}")
        for i, (_, on_result, _) in enumerate(pending):
            on_result(*results[i])

    def close(self) -> None:
        self._shared.clear()
        self.cluster.__exit__(None, None, None)


def open_cells(address: Optional[str], threads: int, gpus: float = 0.0, progress: bool = True,
               log: Callable[[str], None] = print):
    """``LocalCells`` without ``address``; else ``RayCells`` (``"local"``: a local Ray)."""
    if address is None:
        return LocalCells()
    return RayCells(None if address == "local" else address, threads, gpus, progress, log)
