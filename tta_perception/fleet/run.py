"""A fleet run end to end: the bags × methods as tasks (``cluster``), each bag's record written as it
finishes, then the summary (``summary``).

Output folder::

    fleet.json                      the run: settings, bags, names (a resume must match them)
    records/<method>/<bag>.json     one per finished bag (written atomically: a record that exists is whole)
    bags/<method>/<bag>/            the replay's output bag with its metrics files (not with keep_output=False)
    summary.txt|json|csv, tags.csv, paired.csv, summary.png, timeline.png

A killed run leaves finished records, the replay checkpoints of the bags in flight
(``bags/<method>/<bag>.resume/``, or ``.work/`` without output bags) and hidden temporary folders
that no reader takes for a result; ``resume=True`` keeps the records, continues those bags from
their checkpoints and runs the rest, so the summary equals an uninterrupted run's (the timings aside).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..atomic import atomic_write_text, remove_orphans
from .cluster import Cluster, ClusterSettings
from .inputs import bag_names, find_bags
from .task import BagJob, run_job

MANIFEST = "fleet.json"
MANIFEST_FORMAT = "tta_perception.fleet/1"
OWNED = ("records", "bags", ".work", "summary.txt", "summary.json", "summary.csv", "tags.csv", "paired.csv",
         "summary.png", "timeline.png")


@dataclass
class FleetConfig:
    bags: list[str]                       # what the user named: bags, folders, globs, list files
    out: str
    cfg: dict[str, Any]                   # the node configuration (runtime.params.node_config)
    methods: list[str]                    # one run per method on every bag
    replay: dict[str, Any] = field(default_factory=dict)  # bags.replay.ReplayOptions fields
    keep_output: bool = True              # False: --no-output-bags (scores only)
    resume: bool = False
    overwrite: bool = False
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    progress: bool = True
    plot: bool = True


def _log(msg: str) -> None:
    print(msg, flush=True)


def _settings(cfg: FleetConfig) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one (the results depend on it)."""
    from ..bench.output import to_jsonable

    node = {k: v for k, v in cfg.cfg.items() if k not in ("method", "device")}
    return {"cfg": json.loads(json.dumps(to_jsonable(node, None), sort_keys=True)), "methods": list(cfg.methods),
            "replay": to_jsonable(dict(cfg.replay), None), "keep_output": bool(cfg.keep_output),
            "threads": int(cfg.cluster.cpus)}


def _prepare_out(cfg: FleetConfig, out: Path, bags: list[str], names: dict[str, str]) -> Optional[dict[str, Any]]:
    """Check the output folder against its manifest (with ``overwrite``, clear what an earlier run
    left); the manifest to write once the engine is up, None when resuming."""
    path = out / MANIFEST
    settings = _settings(cfg)
    if path.is_file():
        if cfg.overwrite and not cfg.resume:
            for name in OWNED:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            path.unlink()
        elif not cfg.resume:
            raise ValueError(f"{out} holds a fleet run: pass --resume to finish it, or --overwrite to start again")
        else:
            try:
                old = json.loads(path.read_text())
            except ValueError:
                raise ValueError(f"{path} is damaged; pass --overwrite to start again") from None
            if old.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"{path} is not a fleet manifest; pass --overwrite to start again")
            diff = sorted(k for k in settings if old.get("settings", {}).get(k) != settings[k])
            if old.get("bags") != bags:
                diff.append("bags")
            if diff:
                raise ValueError(f"the run in {out} used other settings ({', '.join(diff)} differ): resume it with "
                                 "the same ones, or pass --overwrite to start again")
            return None
    elif cfg.resume:
        raise ValueError(f"nothing to resume in {out} (no {MANIFEST})")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output {out} exists and is not a fleet run; choose a new folder (nothing was written)")
    return {"format": MANIFEST_FORMAT, "settings": settings, "bags": bags, "names": names}


def record_path(out: Path, method: str, name: str) -> Path:
    return out / "records" / method / f"{name}.json"


def load_records(out: Path, jobs: list[BagJob]) -> dict[int, dict[str, Any]]:
    """The finished records of ``jobs`` in ``out`` (index -> record); unreadable ones are redone."""
    found = {}
    for i, job in enumerate(jobs):
        path = record_path(out, job.method, job.name)
        remove_orphans(path.parent)
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("status") == "ok" and rec.get("bag") == job.bag:
            found[i] = rec
    return found


def make_jobs(cfg: FleetConfig, out: Path, bags: list[str], names: dict[str, str]) -> list[BagJob]:
    jobs = []
    for bag in bags:  # bag-major: the methods of a bag run close together
        for m in cfg.methods:
            name = names[bag]
            where = out / ("bags" if cfg.keep_output else ".work") / m / name
            jobs.append(BagJob(bag=bag, name=name, method=m, cfg={**cfg.cfg, "method": m}, replay=dict(cfg.replay),
                               out_bag=str(where), keep_output=cfg.keep_output, threads=int(cfg.cluster.cpus)))
    return jobs


def run_fleet(cfg: FleetConfig, log: Callable[[str], None] = _log,
              on_progress: Optional[Callable[[BagJob, dict[str, Any]], None]] = None,
              on_record: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Run every bag × method; returns the summary (``summary.build``) with ``out`` and ``files``.
    ``on_progress(job, payload)``: the tasks' progress (frames, total, pid, host) as it arrives;
    ``on_record(record)``: each record once written."""
    from tqdm.auto import tqdm

    from ..bench.output import write_json
    from .summary import build, write_summary

    if not cfg.methods:
        raise ValueError("no method to run")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ValueError(f"--methods names a method twice: {','.join(cfg.methods)}")
    out = Path(cfg.out).expanduser().absolute()
    paths = find_bags(cfg.bags)
    if any(out == p or out in p.parents or p in out.parents for p in paths):
        raise ValueError(f"output {out} would overlap a bag it reads; choose a folder outside the bags")
    names_by_path = bag_names(paths)
    bags = [str(p) for p in paths]
    names = {str(p): names_by_path[p] for p in paths}
    manifest = _prepare_out(cfg, out, bags, names)
    jobs = make_jobs(cfg, out, bags, names)
    records: dict[int, dict[str, Any]] = load_records(out, jobs) if cfg.resume else {}
    todo = [i for i in range(len(jobs)) if i not in records]
    t_start = time.perf_counter()
    with Cluster(cfg.cluster, log) as cluster:
        t_ready = time.perf_counter()  # the engine is up: runs are timed from here
        if manifest is not None:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        if cluster.ray is None:
            log(f"Ray is not installed: the {len(todo)} run(s) go one after another in this process "
                "(pip install 'tta_perception[fleet]' runs bags in parallel)")
        log(f"fleet: {len(bags)} bag(s) x {len(cfg.methods)} method(s) ({', '.join(cfg.methods)}): "
            f"{len(todo)} to run" + (f", {len(records)} finished before" if records else "")
            + f"; {cluster.describe()}")
        bag_bar = tqdm(total=len(jobs), initial=len(records), desc="fleet bags", unit="bag",
                       disable=not cfg.progress, position=0, file=sys.stderr)
        frame_bar = tqdm(total=0, desc="fleet frames", unit="frame", disable=not cfg.progress, position=1,
                         file=sys.stderr)
        seen: dict[int, dict[str, Any]] = {}  # job -> latest progress (frames counted, total, pids)

        def progress(k: int, payload: dict[str, Any]) -> None:
            i = todo[k]
            if i in records:
                return
            state = seen.setdefault(i, {"frames": 0, "total": 0, "pids": []})
            pid = f"{payload.get('host')}:{payload.get('pid')}"
            if pid not in state["pids"]:
                state["pids"].append(pid)
            if payload.get("total") and payload["total"] != state["total"]:
                frame_bar.total += int(payload["total"]) - state["total"]
                state["total"] = int(payload["total"])
                frame_bar.refresh()
            done = int(payload.get("frames", 0))
            if done > state["frames"]:
                frame_bar.update(done - state["frames"])
                state["frames"] = done
            if on_progress is not None:
                on_progress(jobs[i], payload)

        def finished(k: int, rec: Optional[dict[str, Any]], wall: float, error: Optional[str]) -> None:
            i = todo[k]
            job = jobs[i]
            if rec is None:
                rec = {"bag": job.bag, "name": job.name, "method": job.method, "status": "failed",
                       "reason": error or "no result"}
            state = seen.get(i, {})
            rec.update(wall_s=wall, submitted_s=time.perf_counter() - t_ready - wall,
                       workers=state.get("pids", []), engine=cluster.info["engine"])
            rec["overhead_s"] = wall - rec["task_s"] if rec.get("task_s") is not None else None
            write_json(record_path(out, job.method, job.name), rec, digits=None)
            records[i] = rec
            bag_bar.update(1)
            if rec["status"] != "ok":
                tqdm.write(f"  {job.name} ({job.method}) failed: {rec['reason']}", file=sys.stderr)
            if on_record is not None:
                on_record(rec)

        try:
            cluster.run(run_job, [jobs[i] for i in todo], on_result=finished, on_progress=progress)
        finally:
            bag_bar.close()
            frame_bar.close()
        info = dict(cluster.info, start_s=t_ready - t_start)
        wall = time.perf_counter() - t_ready
    for path in (out / ".work").glob("*"):  # scratch of finished bags is gone; empty method folders too
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if (out / ".work").is_dir() and not any((out / ".work").iterdir()):
        (out / ".work").rmdir()
    summary = build([records[i] for i in range(len(jobs))], cfg.methods, wall_s=wall, ran=len(todo),
                    cluster=info, settings=_settings(cfg) | {"cluster": asdict(cfg.cluster)},
                    now=[records[i] for i in todo if i in records])
    summary["files"] = write_summary(summary, out, plot=cfg.plot)
    summary["out"] = str(out)
    return summary
