"""A bench run that survives interruptions (``bench --resume``): the run's folder keeps its config
(``config.json``, written at the start), every finished cell (``cells/<stream>__<method>__s<seed>.json``:
the whole ``MethodRun``, companions and per-frame series included, saved as soon as the cell ends)
and the checkpoints of the cells under way (``checkpoints/``, ``bench/checkpoints.py``). A resumed
run loads the finished cells instead of running them and continues the others from their
checkpoints, so its tables equal an uninterrupted run's.

``check_out`` makes every refusal before any work (also in the ``--detach`` parent): ``--resume``
without an earlier run or with other options, and a run into a folder that holds an unfinished
one without ``--resume`` / ``--overwrite``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from ..atomic import atomic_write_text, pid_alive, remove_orphans
from .checkpoints import cell_name, checkpoint_path
from .runner import MethodRun

FORMAT = "tta_perception.bench.run/1"
CELL_FORMAT = "tta_perception.bench.cell/1"
CELLS, CHECKPOINTS = "cells", "checkpoints"
PID_FILE, LOG_FILE = "bench.pid", "bench.log"
#: options that do not change a number of the tables: a resume may change them
COSMETIC = ("progress", "plot", "out", "workers", "cache", "ray", "checkpoint_every", "resume", "overwrite")
#: config field -> the option that sets it, where the names differ
FLAGS = {"sequences": "--sequence", "streaming": "--stream", "ceiling": "--no-ceiling", "prepare_profile": "--paper-scale",
         "temporal_fusion": "--temporal-fusion", "threads": "--threads"}


def flag(key: str) -> str:
    return FLAGS.get(key, "--" + key.replace("_", "-"))


def comparable(config: dict[str, Any], threads: int) -> dict[str, Any]:
    """The options a resume must repeat, as JSON values (tuples as lists), torch's threads included."""
    keep = {k: v for k, v in config.items() if k not in COSMETIC}
    keep["threads"] = int(threads)
    return json.loads(json.dumps(keep, default=str))


def _files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def _read_config(out: Path) -> Optional[dict[str, Any]]:
    path = out / "config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} cannot be read ({type(err).__name__}); pass --overwrite to start over") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bench run's config; pass --overwrite to start over")
    return saved


def check_out(out: Path, config: dict[str, Any], threads: int, *, resume: bool, overwrite: bool,
              explicit_out: bool = True) -> None:
    """Every refusal about the output folder, in one line, before any work (nothing is changed)."""
    out = Path(out)
    pid_path = out / PID_FILE
    if pid_path.is_file():
        try:
            pid = int(pid_path.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid > 0 and pid != os.getpid() and pid_alive(pid):
            raise ValueError(f"a bench run (pid {pid}, {pid_path}) is still writing into {out}: wait for it or "
                             f"stop it (kill {pid}); delete {pid_path} if that process is not a bench run")
    if resume:
        if not explicit_out:
            raise ValueError("--resume continues the run in --out DIR: give --out")
        saved = _read_config(out)
        if saved is None:
            raise ValueError(f"--resume: {out} holds no earlier bench run (no config.json); run without --resume "
                             "to start one")
        old, new = saved.get("config", {}), comparable(config, threads)
        for key in [*new, *(k for k in old if k not in new)]:
            if old.get(key) != new.get(key):
                raise ValueError(f"--resume: the run in {out} used {flag(key)} {_show(old.get(key))}, this command "
                                 f"{flag(key)} {_show(new.get(key))}; resume with the same options, or start over "
                                 "with --overwrite")
        return
    cells, checkpoints = _files(out / CELLS, "*.json"), _files(out / CHECKPOINTS, "*.pt")
    if (cells or checkpoints) and not overwrite:
        saved = _read_config(out)
        if saved is None or saved.get("status") != "finished":
            raise ValueError(f"{out} holds an unfinished bench run ({len(cells)} finished cells, {len(checkpoints)} "
                             "cell checkpoints): pass --resume to continue it, or --overwrite to start over")


def _show(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    return str(value)


class RunDir:
    """The run folder's saved state: its config, the finished cells, the cells' checkpoints."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.cells = self.out / CELLS
        self.checkpoints = self.out / CHECKPOINTS

    def start(self, config: dict[str, Any], threads: int, command: str, *, resume: bool, overwrite: bool,
              explicit_out: bool) -> None:
        """Check (``check_out``), then clear what a new run replaces and record the config."""
        check_out(self.out, config, threads, resume=resume, overwrite=overwrite, explicit_out=explicit_out)
        if not resume:  # a new run: an earlier finished one (or --overwrite) leaves nothing behind
            for folder in (self.cells, self.checkpoints):
                shutil.rmtree(folder, ignore_errors=True)
        for folder in (self.cells, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)
            remove_orphans(folder)  # temporary files of a save that was killed
        saved = _read_config(self.out) if resume else None
        record = {"format": FORMAT, "status": "running", "command": command,
                  "config": saved["config"] if saved else comparable(config, threads),
                  "cosmetic": {k: config.get(k) for k in COSMETIC if k in config}}
        atomic_write_text(self.out / "config.json", json.dumps(record, indent=1, default=str) + "\n")

    def finish(self) -> None:
        """The run wrote its report: a later run into the folder starts over without --overwrite."""
        path = self.out / "config.json"
        record = json.loads(path.read_text())
        record["status"] = "finished"
        atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")
        pid_path = self.out / PID_FILE
        try:
            text = pid_path.read_text().strip() if pid_path.is_file() else ""
            if text and (text == str(os.getpid()) or not (text.isdigit() and pid_alive(int(text)))):
                pid_path.unlink()  # ours, or left by a run that was killed
        except OSError:
            pass

    def cell_file(self, stream: str, method: str, seed: int, kind: str = "") -> Path:
        return self.cells / f"{cell_name(stream, method, seed)}{'__' + kind if kind else ''}.json"

    def load_cell(self, stream: str, method: str, seed: int, kind: str = "") -> Optional[tuple[MethodRun, float]]:
        """A finished cell (its run and wall seconds), or None."""
        path = self.cell_file(stream, method, seed, kind)
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
            if d.get("format") != CELL_FORMAT:
                raise ValueError("not a bench cell")
            return MethodRun.from_dict(d["run"]), float(d["seconds"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"finished cell {path} cannot be read ({clean_reason(err)}); delete it to run the "
                             "cell again, or pass --overwrite to start over") from None

    def save_cell(self, run: MethodRun, seconds: float, kind: str = "") -> None:
        """Save a finished cell, then drop its checkpoint (the cell is safe in the JSON)."""
        text = json.dumps({"format": CELL_FORMAT, "seconds": seconds, "run": run.to_dict()}, default=_jsonable)
        atomic_write_text(self.cell_file(run.stream, run.method, run.seed, kind), text + "\n")
        if not kind:
            checkpoint_path(self.checkpoints, run.stream, run.method, run.seed).unlink(missing_ok=True)

    def save_json(self, name: str, payload: Any) -> None:
        atomic_write_text(self.cells / f"{name}.json", json.dumps(payload, default=_jsonable) + "\n")

    def load_json(self, name: str) -> Any:
        path = self.cells / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None


def _jsonable(obj: Any) -> Any:
    """NumPy scalars and other stragglers of a run's stats (exact: floats keep every digit)."""
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def clean_reason(err: BaseException) -> str:
    from ..weights_only import clean

    return clean(f"{type(err).__name__}: {err}", 120)
