"""Several cameras, one adapted model: ``bench --stream --cameras N``.

The N cameras are ``world.views.views_for(N)`` of one car: the same drive of the same world (the
benchmark seed's) under the same weather at the same instant, each with its own ground truth. Arms:

- ``shared``: one model for all cameras, as ``tta_node cameras:=[...]`` runs it. At each time step
  the N newest frames go through ``StreamingAdapter.predict_batch`` in one forward pass (per-frame
  BatchNorm statistics), then join the adaptation window in camera order: the window holds the last
  ``--window`` frames over all cameras and a step runs every ``--adapt-every`` frames over all
  cameras.
- ``independent``: one model per camera, each on its own camera's stream with the same window and
  ``adapt_every`` (``bench --stream`` N times).
- ``source`` and the ceiling (the oracle) do not adapt, so they have one arm.

Step budget: the same total number of adaptation steps. Both arms step once per ``adapt_every``
frames, so over T time steps each takes N*T/adapt_every steps in all: the shared model takes them
all (N times as many steps per wall-clock second as one camera's model), the independent models a
1/N share each. Total compute is therefore equal and the comparison isolates what sharing the
frames (and the steps) of other cameras does; the reports list the steps of each arm.

Scores, per camera and on the mean over cameras (per seed the mean of the cameras' values), for the
whole sequence (``seq``) and per phase: mean over seeds, the ceiling and the gap closed as the
single-camera stream reports them (``bench/ceiling.py``: ``(method - source) / (ceiling -
source)`` on mean-over-seeds values), and the paired interval of shared - independent over seeds
(``metrics.paired_difference``; significant when it excludes 0).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..atomic import atomic_write_text
from ..metrics import gap_closed, paired_difference, t_interval
from ..runtime.devices import resolve_device
from ..runtime.model_loader import load_model
from .ceiling import MIN_GAP_POINTS, load_ceiling
from .common import PeakMemory, machine_info, model_spec
from .output import write_json, write_rows_csv
from .runner import (KEEP_STATS, MethodRun, RunOptions, _Scorer, adapter_info, build_stream_adapter, frame_stamps,
                     method_seconds, run_method, seed_everything)
from .streams import BenchStream, world_seg_stream
from .suite import BenchConfig, _log, fisher_source, resolve_bundle, seg_range
from .variants import VARIANTS, build_variant, needs_bundle

SHARED, INDEPENDENT, ONE = "shared", "independent", "-"
CONFIDENCE = 0.95


def camera_streams(cfg: BenchConfig, seed: int) -> list[BenchStream]:
    """The streams of ``views_for(cfg.cameras)`` for benchmark seed ``seed``, named ``<seq>@<view>``."""
    from ..world.schedule import load_schedule
    from ..world.views import views_for

    seqs = cfg.sequences or ["dynamic"]
    if len(seqs) != 1:
        raise ValueError("--cameras runs one sequence at a time (--sequence NAME; default dynamic)")
    stop, stride = seg_range(cfg, load_schedule(seqs[0]))
    out = []
    for view in views_for(cfg.cameras):
        st = world_seg_stream(seqs[0], setting=cfg.setting, batch_size=1, start=cfg.start, stop=stop,
                              stride=stride, size=cfg.size, seed=seed, workers=cfg.workers,
                              cache_dir=Path(cfg.cache), progress=cfg.progress, view=view)
        out.append(dataclasses.replace(st, name=f"{seqs[0]}@{view}"))
    return out


def run_shared(name: str, source_model: torch.nn.Module, streams: Sequence[BenchStream], opts: RunOptions, *,
               bundle=None, fisher_batches=None) -> list[MethodRun]:
    """Variant ``name`` on a fresh copy of ``source_model``, one adapter for every camera: each time
    step's frames through the node's frame path in one batch, in camera order (module docstring).
    One run per camera; with one camera the result equals ``run_method`` on its stream."""
    from ..runtime.frame_path import FramePath

    if opts.background or opts.realtime_hz or VARIANTS[name].domain_memory:
        raise ValueError("--cameras runs inline adaptation without domain memory or --realtime")
    seed_everything(opts.seed)
    scorers = [_Scorer(st.task, st.num_classes, st.cycle_frames) for st in streams]
    steps = 0
    with PeakMemory(opts.device) as mem:
        t0 = time.perf_counter()
        model = copy.deepcopy(source_model).to(opts.device)
        method = build_variant(name, model, bundle=bundle, fisher_batches=fisher_batches, safety=opts.safety)
        setup_s = time.perf_counter() - t0
        adapter = build_stream_adapter(method, opts)
        path = FramePath(adapter, preset=opts.flow_preset, sync=True)
        try:
            for chunks in zip(*streams):
                if len({tuple(c.index) for c in chunks}) != 1:
                    raise ValueError("the cameras' streams are not aligned frame by frame")
                x = torch.cat([c.tensor() for c in chunks]).to(opts.device)
                stamps = [frame_stamps(st, c)[0] for st, c in zip(streams, chunks)]
                done = path.run(x, [st.name for st in streams], stamps)
                steps += 1
                for k, c in enumerate(chunks):
                    scorers[k].update(done[k].logits[None], c)
        finally:
            adapter.wait_idle()
            st = adapter.stats()
            adapter.close()
    info = {**adapter_info(adapter, st), "cameras": len(streams), "shared": True}
    stats = {k: v for k, v in method.stats.items() if k in KEEP_STATS}
    ms = method_seconds(path) * 1e3 / max(1, steps * len(streams))
    return [MethodRun(name, s.name, opts.seed, frames=steps, ms_per_frame=ms, setup_s=setup_s,
                      peak_mem_mib=mem.peak_mib, mem_kind=mem.kind, stats=dict(stats), streaming=dict(info),
                      **sc.fields()) for s, sc in zip(streams, scorers)]


def run_independent(name: str, source_model: torch.nn.Module, streams: Sequence[BenchStream], opts: RunOptions, *,
                    bundle=None, fisher_batches=None) -> list[MethodRun]:
    """One model per camera: ``run_method`` on each camera's stream."""
    return [run_method(name, source_model, st, opts, bundle=bundle, fisher_batches=fisher_batches) for st in streams]


# ------------------------------------------------------------------------------------ scores
def camera_values(stream: BenchStream, run: MethodRun) -> dict[str, float]:
    """One camera's values: every phase (column) and ``seq`` (the whole sequence)."""
    vals = {c: run.domains.get(stream.column_domain[c], float("nan")) for c in stream.columns}
    vals["seq"] = run.overall
    return vals


def arm_values(streams: Sequence[BenchStream], runs: Sequence[MethodRun]) -> dict[str, dict[str, float]]:
    """Per camera and ``mean`` (the mean over cameras; a phase some camera lacks: the others' mean)."""
    per = {st.name: camera_values(st, r) for st, r in zip(streams, runs)}
    keys = list(dict.fromkeys(k for v in per.values() for k in v))
    mean = {}
    for k in keys:
        vs = [v[k] for v in per.values() if not math.isnan(v.get(k, float("nan")))]
        mean[k] = sum(vs) / len(vs) if vs else float("nan")
    return {**per, "mean": mean}


def _mean(vals: Sequence[float]) -> float:
    vals = [v for v in vals if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def summarise(values: dict[tuple[str, str], dict[int, dict[str, dict[str, float]]]], seeds: Sequence[int],
              cameras: Sequence[str], keys: Sequence[str]) -> dict[str, Any]:
    """``values[(method, arm)][seed][camera or 'mean'][key]`` -> rows of means over seeds with their
    intervals, gap closed to the ceiling and the paired shared - independent intervals."""
    rows: dict[str, Any] = {}
    for (m, arm), by_seed in values.items():
        label = m if arm == ONE else f"{m} {arm}"
        rows[label] = {"method": m, "arm": arm, "seeds": sorted(by_seed), "cells": {}}
        for cam in [*cameras, "mean"]:
            rows[label]["cells"][cam] = {k: t_interval([by_seed[s][cam].get(k, float("nan")) for s in sorted(by_seed)],
                                                       CONFIDENCE) for k in keys}
    mean_of = {lab: {cam: {k: iv.mean for k, iv in c.items()} for cam, c in r["cells"].items()}
               for lab, r in rows.items()}
    gaps: dict[str, Any] = {}
    if "source" in mean_of and "ceiling" in mean_of:
        src, ceil = mean_of["source"], mean_of["ceiling"]
        for lab, v in mean_of.items():
            if lab in ("source", "ceiling"):
                continue
            gaps[lab] = {cam: {k: gap_closed(v[cam][k], src[cam][k], ceil[cam][k], min_gap=MIN_GAP_POINTS)
                               for k in keys} for cam in [*cameras, "mean"]}
    paired: dict[str, Any] = {}
    for m in dict.fromkeys(m for m, _ in values):
        sh, ind = values.get((m, SHARED)), values.get((m, INDEPENDENT))
        if not sh or not ind:
            continue
        common = sorted(set(sh) & set(ind) & set(seeds))
        paired[m] = {cam: {k: paired_difference([sh[s][cam].get(k, float("nan")) for s in common],
                                                [ind[s][cam].get(k, float("nan")) for s in common], CONFIDENCE)
                           for k in keys} for cam in [*cameras, "mean"]}
    return {"rows": rows, "gap_closed": gaps, "paired": paired}


def _iv(iv) -> str:
    if math.isnan(iv.mean):
        return "–"
    if iv.n < 2 or math.isnan(iv.half_width):
        return f"{iv.mean:+.2f} (n={iv.n})"
    return f"{iv.mean:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}]{' *' if iv.significant else ''}"


def format_summary(s: dict[str, Any], cameras: Sequence[str], phases: Sequence[str], title: str) -> list[str]:
    """Text tables: seq per camera; per phase on the mean over cameras; gap closed; paired differences."""
    short = [c.split("@")[-1] for c in cameras]
    lab_w = max(8, *(len(k) for k in s["rows"]))
    cols = [*short, "mean"]
    out = [f"{title}: mIoU % over the whole sequence per camera and the mean over cameras (mean over seeds)",
           f"{'':<{lab_w}} " + " ".join(f"{c:>8}" for c in cols)]
    for lab, r in s["rows"].items():
        out.append(f"{lab:<{lab_w}} " + " ".join(f"{r['cells'][c]['seq'].mean:>8.2f}" for c in [*cameras, "mean"]))
    out += ["", f"per phase, mean over cameras (mIoU %)",
            f"{'':<{lab_w}} " + " ".join(f"{p[:8]:>8}" for p in [*phases, "seq"])]
    for lab, r in s["rows"].items():
        out.append(f"{lab:<{lab_w}} " + " ".join(f"{r['cells']['mean'][k].mean:>8.2f}" for k in [*phases, "seq"]))
    if s["gap_closed"]:
        out += ["", f"gap closed, % of the source -> ceiling gap (nan where the ceiling is < {MIN_GAP_POINTS:g} "
                    "point above source): seq per camera and mean; per phase on the mean over cameras",
                f"{'':<{lab_w}} " + " ".join(f"{c[:8]:>8}" for c in [*cols, *phases])]
        for lab, g in s["gap_closed"].items():
            vals = [g[c]["seq"] for c in [*cameras, "mean"]] + [g["mean"][p] for p in phases]
            out.append(f"{lab:<{lab_w}} " + " ".join(f"{100 * v:>8.1f}" for v in vals))
    for m, p in s["paired"].items():
        out += ["", f"{m}: shared - independent, mIoU points, mean [95 % paired interval over seeds] "
                    "(* = excludes 0)"]
        for c, name in zip([*cameras, "mean"], cols):
            out.append(f"  seq {name:<8} {_iv(p[c]['seq'])}")
        for ph in phases:
            out.append(f"  {ph:<12} {_iv(p['mean'][ph])}  (mean over cameras)")
    return out


# ------------------------------------------------------------------------------------ the command
def run_cameras(cfg: BenchConfig, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """``bench --stream --cameras N``: shared against independent adaptation (module docstring)."""
    if not cfg.streaming or cfg.task != "seg" or cfg.dataset != "world":
        raise ValueError("--cameras is the streaming protocol on the embedded world: --task seg --stream")
    if cfg.background or cfg.realtime or cfg.setting != "continual":
        raise ValueError("--cameras: continual setting, inline adaptation, no --realtime")
    bad = [m for m in cfg.methods if VARIANTS[m].domain_memory]
    if bad:
        raise ValueError(f"--cameras: no domain-memory variants ({', '.join(bad)})")
    device = resolve_device(cfg.device, "--device")
    machine = machine_info(device)
    t_start = time.perf_counter()
    out = Path(cfg.out) if cfg.out else Path("runs/bench") / f"seg_stream_cameras{cfg.cameras}"
    out.mkdir(parents=True, exist_ok=True)
    streams0 = camera_streams(cfg, cfg.seeds[0])
    lm = load_model(**model_spec("seg", cfg.model, cfg.weights, cfg.random_init), task="seg",
                    num_classes=streams0[0].num_classes, device=device, label="--model", architecture_label="--model")
    bundle, bundle_info = (None, {})
    if needs_bundle(cfg.methods):
        bundle, bundle_info = resolve_bundle(cfg, lm, log)
    fisher = fisher_source(cfg)[0] if any(VARIANTS[m].method == "eata" for m in cfg.methods) else None
    ceiling = load_ceiling(cfg, lm, "seg", streams0[0].num_classes, device, log)
    cameras = [st.name for st in streams0]
    phases = list(dict.fromkeys(c for st in streams0 for c in st.columns))
    values: dict[tuple[str, str], dict[int, dict[str, dict[str, float]]]] = {}
    runs: list[dict[str, Any]] = []
    costs: dict[str, dict[str, list[float]]] = {}

    def record(m: str, arm: str, seed: int, streams: list[BenchStream], rs: list[MethodRun], secs: float) -> None:
        values.setdefault((m, arm), {})[seed] = arm_values(streams, rs)
        steps = rs[0].streaming.get("adapt_steps", 0) if arm == SHARED else \
            sum(r.streaming.get("adapt_steps", 0) for r in rs)
        c = costs.setdefault(m if arm == ONE else f"{m} {arm}", {"steps": [], "ms_per_frame": [], "seconds": [],
                                                                 "models": []})
        c["steps"].append(steps)
        c["ms_per_frame"].append(_mean([r.ms_per_frame for r in rs]))
        c["seconds"].append(secs)
        c["models"].append(1 if arm == SHARED else len(rs))
        for r in rs:
            runs.append({**r.summary(), "arm": arm})
        log(f"  seed {seed} {m:<8} {arm:<11} mean over cameras {values[(m, arm)][seed]['mean']['seq']:6.2f} "
            f"({', '.join(f'{r.overall:.2f}' for r in rs)}), {steps} steps, {secs:6.1f} s")

    def report(done: list[int]) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
        """Tables and files of the seeds done so far (written after every seed: a run stopped early keeps them)."""
        keys = [*phases, "seq"]
        s = summarise(values, done, cameras, keys)
        title = (f"{cfg.cameras} cameras ({', '.join(c.split('@')[-1] for c in cameras)}) on {cameras[0].split('@')[0]}, "
                 f"seeds {','.join(map(str, done))}, window {cfg.window}, adapt every {cfg.adapt_every} frames")
        text = format_summary(s, cameras, phases, title)
        text += ["", "adaptation steps per run over all cameras (equal total budget: module docstring), models held, "
                     "ms of method work per frame, seconds per run (mean over seeds)"]
        for lab, c in costs.items():
            text.append(f"  {lab:<20} steps {_mean(c['steps']):7.1f}  models {c['models'][0]}  "
                        f"{_mean(c['ms_per_frame']):7.2f} ms/frame  {_mean(c['seconds']):7.1f} s")
        csv_rows = [{"row": lab, "camera": cam.split("@")[-1], **{k: r["cells"][cam][k].mean for k in keys}}
                    for lab, r in s["rows"].items() for cam in [*cameras, "mean"]]
        write_rows_csv(out / "cameras.csv", csv_rows, ["row", "camera", *keys])
        paired_rows = [{"method": m, "camera": cam.split("@")[-1], "key": k, **p[cam][k].as_dict()}
                       for m, p in s["paired"].items() for cam in [*cameras, "mean"] for k in keys]
        if paired_rows:
            write_rows_csv(out / "paired_shared_minus_independent.csv", paired_rows)
        jsonable = {"rows": {lab: {**{k: v for k, v in r.items() if k != "cells"},
                                   "cells": {cam: {k: iv.as_dict() for k, iv in c.items()} for cam, c in r["cells"].items()}}
                             for lab, r in s["rows"].items()},
                    "gap_closed": s["gap_closed"],
                    "paired": {m: {cam: {k: iv.as_dict() for k, iv in c.items()} for cam, c in p.items()}
                               for m, p in s["paired"].items()}}
        payload = {"command": "tta-perception " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "",
                   "config": dataclasses.asdict(cfg), "machine": machine, "model": {"arch": lm.arch,
                                                                                    "weights": lm.weights_desc},
                   "bundle": bundle_info, "ceiling": ceiling.desc if ceiling else None, "cameras": cameras,
                   "phases": phases, "seeds_done": done, "design": __doc__, "summary": jsonable, "costs": costs, "runs": runs}
        payload["machine"]["load_avg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        payload["seconds"] = round(time.perf_counter() - t_start, 1)
        write_json(out / "results.json", payload)
        atomic_write_text(out / "results.txt", "\n".join(text) + "\n")
        return s, text, payload

    for si, seed in enumerate(cfg.seeds):
        streams = streams0 if si == 0 else camera_streams(cfg, seed)
        opts = RunOptions(device=device, seed=seed, streaming=True, window=cfg.window, adapt_every=cfg.adapt_every,
                          predict_mode=cfg.predict, bn_stats=cfg.bn_stats, safety=cfg.safety, progress=False)
        for m in cfg.methods:
            arms = [ONE] if VARIANTS[m].method == "source" else [SHARED, INDEPENDENT]
            for arm in arms:
                t0 = time.perf_counter()
                fn = run_shared if arm == SHARED else run_independent
                rs = fn(m, lm.model, streams, opts, bundle=bundle, fisher_batches=fisher)
                record(m, arm, seed, streams, rs, time.perf_counter() - t0)
        if ceiling is not None:
            t0 = time.perf_counter()
            rs = [ceiling.run(st, opts) for st in streams]
            record("ceiling", ONE, seed, streams, rs, time.perf_counter() - t0)
        s, text, payload = report(cfg.seeds[: si + 1])
    log("\n" + "\n".join(text))
    log(f"\nwrote {out}/results.json, results.txt, cameras.csv, paired_shared_minus_independent.csv "
        f"in {payload['seconds']:.0f} s")
    payload["out"] = str(out)
    payload["summary_obj"] = s
    return payload
