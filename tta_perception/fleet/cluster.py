"""Ray, in one place: joining a cluster or starting a local one, what each task asks for, running
tasks with a retry when their worker dies, and progress from the tasks; the same loop runs the
tasks one after another in this process where Ray is not installed.

- ``address`` (``--ray-address``) is only ever passed to ``ray.init``: ``auto`` (the cluster this
  machine belongs to), ``HOST:PORT`` (its GCS, ``ray start --head`` prints it) or
  ``ray://HOST:PORT`` (Ray Client, e.g. KubeRay's head service).
- Without an address a **local Ray** starts with this machine's cores (or ``local_cpus``), no
  dashboard, listening on 127.0.0.1 only, with a token made for this run (Ray's token
  authentication; nothing is written to ``~/.ray``) unless ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN`` say
  otherwise, and it is shut down at the end. A Ray already initialised in this process is used as it is.
- Each task asks for ``cpus`` CPUs (its torch threads) and ``gpus`` GPUs (fractions allowed: 0.5
  puts two tasks on a GPU); at most ``parallel`` run at once (``--workers``, and what the cluster's
  nodes can place), so a task's wall time is its run, not its wait in a queue.
- A task whose worker process dies (killed, out of memory, node lost) is retried once by Ray
  (``max_retries=1``); a task's own errors are its result (the task function catches them).
"""
from __future__ import annotations

import math
import os
import re
import secrets
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

RETRIES = 1                  # retries of a task whose worker died
POLL_S = 0.5                 # how often the driver looks for progress
REPORT_EVERY_S = 0.5         # how often a task sends its progress
_ADDRESS = re.compile(r"(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(\d{1,5})")


@contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count fixed for the block, then restored: results depend on it, so a
    task pins the count it was given (a Ray worker would otherwise have its own)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def import_ray(local: bool = False):
    """The ``ray`` module, or None where it is not installed. ``local``: a local Ray is about to
    start, so its servers listen on 127.0.0.1 only (read when ray is first imported)."""
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # on Linux: the loopback address
    try:
        import ray
    except ImportError:
        return None
    return ray


def check_address(address: str) -> str:
    """``--ray-address`` as given, if it has the form of a Ray address; a one-line ValueError if not."""
    text = str(address).strip()
    if text == "auto":
        return text
    m = _ADDRESS.fullmatch(text)
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ValueError(f"--ray-address {address!r}: give auto, HOST:PORT (the head's GCS, e.g. 10.0.0.5:6379) "
                         "or ray://HOST:PORT (Ray Client, e.g. 10001)")
    return text


def check_shares(cpus: int, gpus: float) -> None:
    if int(cpus) < 1:
        raise ValueError("--cpus-per-bag must be >= 1")
    if gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        raise ValueError(f"--gpus-per-bag {gpus:g}: a fraction of one GPU (0.25, 0.5) or a whole number")


def task_resources(cpus: int, gpus: float) -> dict[str, Any]:
    """What one task asks Ray for."""
    check_shares(cpus, gpus)
    out: dict[str, Any] = {"num_cpus": int(cpus)}
    if gpus > 0:
        out["num_gpus"] = float(gpus)
    return out


def placeable(nodes: Sequence[dict[str, float]], cpus: int, gpus: float, workers: Optional[int] = None) -> int:
    """How many tasks of ``cpus`` CPUs and ``gpus`` GPUs the nodes' resources (``{"CPU": n, "GPU":
    m}`` each) hold at once, capped by ``workers``; ValueError when none fits anywhere."""
    check_shares(cpus, gpus)
    total = 0
    for node in nodes:
        fit = math.floor(float(node.get("CPU", 0)) / int(cpus) + 1e-9)
        if gpus > 0:
            fit = min(fit, math.floor(float(node.get("GPU", 0)) / gpus + 1e-9))
        total += max(0, fit)
    if total == 0:
        have = ", ".join(f"{float(n.get('CPU', 0)):g} CPU/{float(n.get('GPU', 0)):g} GPU" for n in nodes) or "none"
        raise ValueError(f"no node of the Ray cluster has {int(cpus)} CPU(s)"
                         + (f" and {gpus:g} GPU" if gpus > 0 else "") + f" free for a task (nodes: {have}); "
                         "lower --cpus-per-bag / --gpus-per-bag or add nodes")
    return min(total, int(workers)) if workers else total


@dataclass
class ClusterSettings:
    address: Optional[str] = None        # None: a local Ray
    workers: Optional[int] = None        # at most this many tasks at once
    cpus: int = 1                        # per task
    gpus: float = 0.0                    # per task
    local_cpus: Optional[int] = None     # a local Ray's CPUs (default: this machine's)
    temp_dir: Optional[str] = None       # a local Ray's session folder root


class ProgressBoard:
    """The tasks' latest progress by key (a Ray actor; the driver takes what arrived)."""

    def __init__(self) -> None:
        self._updates: dict[Any, dict[str, Any]] = {}

    def update(self, key: Any, payload: dict[str, Any]) -> None:
        self._updates[key] = payload

    def take(self) -> dict[Any, dict[str, Any]]:
        out, self._updates = self._updates, {}
        return out


class BoardReporter:
    """A task's progress callback: sends to the board at most every ``REPORT_EVERY_S`` (and always
    the first and the last report)."""

    def __init__(self, board: Any, key: Any):
        self.board, self.key, self._last = board, key, 0.0

    def __call__(self, payload: dict[str, Any]) -> None:
        now = time.monotonic()
        last = payload.get("total") and payload.get("frames") == payload.get("total")
        if last or now - self._last >= REPORT_EVERY_S or not self._last:
            self._last = now
            self.board.update.remote(self.key, dict(payload))


class Cluster:
    """Where the tasks run: Ray (an existing cluster, or a local one started here), or this process
    (``ray is None``) when Ray is not installed and no address was given."""

    def __init__(self, settings: ClusterSettings, log: Callable[[str], None] = print):
        self.settings = settings
        self.log = log
        self.ray = None
        self.parallel = 1
        self._started = False
        self._env: dict[str, Optional[str]] = {}
        self.info: dict[str, Any] = {"engine": "in-process"}

    def __enter__(self) -> "Cluster":
        s = self.settings
        address = check_address(s.address) if s.address else None
        task_resources(s.cpus, s.gpus)
        if address is None and "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
            if "ray" not in sys.modules:  # the mode is read when ray is imported
                self._setenv("RAY_AUTH_MODE", "token")
            self._setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))  # this run's, kept in memory
        ray = import_ray(local=address is None)
        if ray is None:
            if address:
                raise ValueError(f"--ray-address {address}: Ray is not installed here (pip install "
                                 "'tta_perception[fleet]', the same Ray version as the cluster)")
            return self
        self.ray = ray
        if not ray.is_initialized():
            import logging

            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                          logging_level=logging.WARNING, configure_logging=True)
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    if s.temp_dir:
                        kwargs["_temp_dir"] = str(s.temp_dir)
                    ray.init(num_cpus=int(s.local_cpus or os.cpu_count() or 1), **kwargs)
            except (ConnectionError, RuntimeError, ValueError, OSError, TimeoutError) as err:
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
                raise ValueError(f"cannot start or join {where}: {first[:300]}") from None
            self._started = True
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        self.parallel = placeable(nodes, s.cpus, s.gpus, s.workers)
        total = ray.cluster_resources()
        self.info = {"engine": "ray", "ray_version": ray.__version__,
                     "address": address or "local", "nodes": len(nodes),
                     "cpus": float(total.get("CPU", 0)), "gpus": float(total.get("GPU", 0)),
                     "parallel": self.parallel, "task_resources": task_resources(s.cpus, s.gpus)}
        return self

    def _setenv(self, key: str, value: str) -> None:
        self._env.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def __exit__(self, *exc: Any) -> None:
        if self.ray is not None and self._started:
            self.ray.shutdown()
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def describe(self) -> str:
        i = self.info
        if i["engine"] != "ray":
            return "in this process, one bag after another"
        where = "a local Ray" if i["address"] == "local" else f"the Ray cluster at {i['address']}"
        return (f"{where} ({i['nodes']} node(s), {i['cpus']:g} CPUs, {i['gpus']:g} GPUs): {i['parallel']} at once, "
                f"each with {self.settings.cpus} CPU(s)" + (f" and {self.settings.gpus:g} GPU" if self.settings.gpus else ""))

    # ------------------------------------------------------------------------------------ running
    def run(self, fn: Callable[..., Any], jobs: Sequence[Any], *,
            on_result: Callable[[int, Any, float, Optional[str]], None],
            on_progress: Optional[Callable[[int, dict[str, Any]], None]] = None) -> None:
        """``fn(job, report)`` for every job; ``on_result(index, result, wall_s, error)`` as each
        finishes (``error``: one line when the task could not complete, e.g. its worker died twice),
        ``on_progress(index, payload)`` with what the tasks report. ``fn`` must be importable by
        name (a module-level function) for Ray to run it elsewhere."""
        if self.ray is None:
            for i, job in enumerate(jobs):
                t0 = time.perf_counter()
                result = fn(job, (lambda p, i=i: on_progress(i, p)) if on_progress else None)
                on_result(i, result, time.perf_counter() - t0, None)
            return
        ray = self.ray
        remote = ray.remote(fn).options(**task_resources(self.settings.cpus, self.settings.gpus),
                                        max_retries=RETRIES, retry_exceptions=False)
        board = ray.remote(num_cpus=0)(ProgressBoard).remote() if on_progress else None
        todo = list(enumerate(jobs))
        inflight: dict[Any, tuple[int, float]] = {}
        try:
            while todo or inflight:
                while todo and len(inflight) < self.parallel:
                    i, job = todo.pop(0)
                    ref = remote.remote(job, BoardReporter(board, i) if board is not None else None)
                    inflight[ref] = (i, time.perf_counter())
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
                now = time.perf_counter()
                if board is not None:
                    for key, payload in ray.get(board.take.remote()).items():
                        on_progress(key, payload)
                for ref in ready:
                    i, t0 = inflight.pop(ref)
                    try:
                        result, error = ray.get(ref), None
                    except ray.exceptions.RayError as err:
                        result, error = None, _ray_error(err)
                    on_result(i, result, now - t0, error)
        except BaseException:
            for ref in inflight:
                ray.cancel(ref, force=True)
            raise
        finally:
            if board is not None:
                ray.kill(board)


def _ray_error(err: BaseException) -> str:
    name = type(err).__name__
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    if "WorkerCrashed" in name or "died" in first.lower() or "OutOfMemory" in name:
        return f"its worker died {RETRIES + 1} times ({name}: {first[:300]})"
    return f"{name}: {first[:300]}"
