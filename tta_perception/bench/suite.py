"""``tta-perception bench`` end to end: streams -> model -> bundle -> methods x seeds -> report."""
from __future__ import annotations

import os
import shlex
from dataclasses import replace
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable


from ..runtime.devices import resolve_device
from ..runtime.model_loader import load_model
from .ceiling import CEILING, load_ceiling, report_ceiling, with_ceiling
from .common import DEFAULT_CACHE, machine_info, model_spec
from .prepare import (PrepareSettings, cached_bundle_path, default_bundle_path, run_prepare, source_batches)
from ..atomic import atomic_write_text
from .cells import open_cells
from .cycles import cycles_report
from .long_drive import long_drive_report
from .quality import guard_report, quality_report
from .evidence import evidence_report
from .output import write_json
from .parts import aggregate_parts, format_parts, write_parts_csv
from .realtime import measure_costs, realtime_report, resolve_costs
from .resume import RunDir
from .report import (add_ratios, aggregate, format_costs, format_headline, format_table, headline, plot_runs,
                     write_csv)
from .runner import RunOptions, source_forward_ms
from .streams import SEG_SEQUENCES, public_stream, stream_seeds, world_cls_stream, world_seg_stream
from .temporal import temporal_report
from .variants import FUSION_SUFFIXES, VARIANTS, needs_bundle

DEFAULT_BATCH = {"cls": 64, "seg": 8}
DEFAULT_CLS_N = 512
QUICK_CLS = dict(n=16, batch_size=16)
QUICK_SEG_FRAMES = 12
# ``bench --task cls --paper-scale``: the paper's CIFAR protocol (batch 200, official phase-A amounts,
# the test order shuffled per seed as the reference framework's loader, 3 seeds) on as many crops per
# corruption as a 2-core CPU runs in about 2 hours for all 8 methods (docs/benchmark.md: the paper
# has 10,000 per corruption; the cost per method was measured first). Seeds: every method runs
# seed 0; DPLOT and the two best prior methods of seed 0 ("best2") run every seed.
PAPER_SCALE = dict(batch_size=200, n=2000, shuffle=True, prepare_profile="official", seeds=[0, 1, 2],
                   seeds_for=["dplot", "best2"])


@dataclass
class BenchConfig:
    task: str
    methods: list[str]
    setting: str = "continual"
    dataset: str = "world"
    data_root: str | None = None
    source_root: str | None = None
    sequences: list[str] = field(default_factory=list)
    model: str | None = None
    weights: str | None = None
    random_init: bool = False
    allow_code_architecture: bool = False  # --model may be 'module:function' (the user's builder)
    batch_size: int | None = None
    severity: int = 5
    corruptions: list[str] | None = None
    n: int | None = None                 # cls: crops per domain; public: samples per domain
    start: int = 0
    frames: int | None = None            # seg: stop index
    stride: int | None = None            # seg: None = 1, or with ``quick`` QUICK_SEG_FRAMES spread over a sequence
    size: tuple[int, int] = (128, 256)
    streaming: bool = False
    window: int = 4
    adapt_every: int = 4
    background: bool = False
    predict: str = "method"
    bn_stats: str = "auto"
    quick: bool = False
    seeds: list[int] = field(default_factory=lambda: [0])
    realtime: float | None = None        # streaming: also run the real-time protocol at this camera rate (Hz)
    realtime_costs: str | None = None    # ... with the costs recorded in this results.json
    cycles: int | None = None            # looping sequences (dynamic): this many weather cycles
    cameras: int | None = None           # streaming: N cameras of one car, shared vs independent (bench/cameras.py)
    temporal_fusion: float = 0.0         # streaming seg: weight of the past of the '<m>+tf' rows (docs/video.md)
    flow_preset: str = "fast"            # optical flow of the video rows and the flicker metric
    # methods that run every seed (the others only the first); "bestK": the K best prior methods of
    # the first seed. None: every method runs every seed
    seeds_for: list[str] | None = None
    shuffle: bool = False                # cls: test order drawn from the seed (reference loader)
    prepare_profile: str | None = None   # phase-A amounts: None = prepare's CPU defaults (world) / official
    paper_scale: bool = False            # the --paper-scale preset filled the fields above
    bundle: str | None = None
    safety: bool = False
    quality_source_every: int = 0     # streaming seg: the estimated gain over the source model every N frames
    device: str = "auto"
    out: str | None = None
    cache: str = str(DEFAULT_CACHE)
    workers: int = 2
    ray: str | None = None               # cells as Ray tasks: "local" (a local Ray) or a cluster's address
    progress: bool = True
    plot: bool = True
    ceiling: bool = True                 # run the oracle as the tables' ceiling row where one exists
    ceiling_weights: str | None = None   # the oracle's checkpoint for a model without a committed one
    # long drives (docs/benchmark.md "Long drives"): checkpoints inside each streaming cell every N frames
    # (None: one weather cycle of a looping sequence, else off; 0: off), --resume, --overwrite
    checkpoint_every: int | None = None
    resume: bool = False
    overwrite: bool = False


def _log(msg: str) -> None:
    print(msg, flush=True)


def build_streams(cfg: BenchConfig, seed: int) -> list:
    cache = Path(cfg.cache)
    if cfg.dataset != "world":
        if not cfg.data_root:
            raise ValueError("--data-root is required with --dataset")
        seqs = cfg.sequences or [None]
        return [public_stream(cfg.dataset, cfg.data_root, setting=cfg.setting, batch_size=cfg.batch_size,
                              severity=cfg.severity, num_samples=cfg.n, corruptions=cfg.corruptions, sequence=s,
                              seed=stream_seeds(seed)["shuffle_seed"]) for s in seqs]
    bs = cfg.batch_size or DEFAULT_BATCH[cfg.task]
    if cfg.streaming:
        bs = 1
    if cfg.task == "cls":
        if cfg.sequences and cfg.sequences != ["corruptions"]:
            raise ValueError("cls has one sequence: 'corruptions' (the 15 corruptions on held-out sign crops)")
        n = cfg.n or (QUICK_CLS["n"] if cfg.quick else DEFAULT_CLS_N)
        if cfg.quick and cfg.batch_size is None:
            bs = QUICK_CLS["batch_size"]
        return [world_cls_stream(n=n, setting=cfg.setting, batch_size=bs, severity=cfg.severity,
                                 corruptions=cfg.corruptions, seed=seed, shuffle=cfg.shuffle, cache_dir=cache,
                                 progress=cfg.progress)]
    from ..world.schedule import load_schedule

    out = []
    for name in cfg.sequences or list(SEG_SEQUENCES):
        stop, stride = seg_range(cfg, load_schedule(name))
        out.append(world_seg_stream(name, setting=cfg.setting, batch_size=bs if not cfg.quick or cfg.batch_size
                                    else min(bs, 4), start=cfg.start, stop=stop, stride=stride, size=cfg.size,
                                    seed=seed, workers=cfg.workers, cache_dir=cache, progress=cfg.progress))
    return out


def seg_range(cfg: BenchConfig, sched) -> tuple[int | None, int]:
    """(stop, stride) of the driving sequence ``sched``: ``cycles`` whole weather cycles of a looping
    one; ``quick`` without ``frames``: QUICK_SEG_FRAMES frames, spread over the sequence, or the first
    ones at the stride the user gave (so a video option still sees consecutive frames)."""
    stop, stride = cfg.frames, cfg.stride or 1
    if cfg.cycles and sched.loop and sched.period > 0:
        stop = int(round(cfg.cycles * sched.period * sched.fps))
    if cfg.quick and cfg.frames is None:
        if cfg.stride is None:
            stride = max(1, sched.frames // QUICK_SEG_FRAMES)
        elif stop is None:
            stop = min(sched.frames, cfg.start + QUICK_SEG_FRAMES * stride)
    return stop, stride


def prepare_settings(cfg: BenchConfig) -> PrepareSettings:
    """Phase-A amounts of an automatic prepare: the embedded world uses prepare's CPU defaults; a
    public benchmark (a reproduction, normally on a GPU) the official amounts; ``prepare_profile``
    overrides both (``--paper-scale``: official)."""
    if cfg.dataset == "world":
        profile = cfg.prepare_profile or ("quick" if cfg.quick else "default")
        return PrepareSettings.for_task(cfg.task, profile, size=cfg.size)
    if not cfg.source_root:
        raise ValueError("the phase-A bundle needs source data: give --bundle PATH (tta-perception prepare "
                         "--dataset ...) or --source-root PATH")
    return PrepareSettings.for_task(cfg.task, cfg.prepare_profile or ("quick" if cfg.quick else "official"),
                                    source=cfg.dataset, data_root=cfg.source_root)


def resolve_bundle(cfg: BenchConfig, lm, log: Callable[[str], None] = _log) -> tuple[Any, dict[str, Any]]:
    """--bundle; else the committed bundle of the committed weights (the one the node loads); else
    ``runs/prepare/<arch>_dplot.bundle`` made from the same weights; else a cached bundle made here
    with ``prepare``'s defaults (``--quick``: its quick amounts). A bundle is only reused for the
    weights it was prepared from, since DPLOT and RMT load its warmed student/teacher."""
    from ..engine.bundle import load_bundle, save_bundle
    from ..models.checkpoint import read_manifest
    from ..paths import WEIGHTS_DIR

    if cfg.bundle:
        b = load_bundle(cfg.bundle)
        if b.metadata.get("weights_id") not in (None, lm.weights_id):
            log(f"warning: bundle {cfg.bundle} was prepared from other weights ({b.metadata.get('weights')}); "
                "DPLOT/RMT load its warmed weights")
        return b, {"path": cfg.bundle, "how": "given (--bundle)"}
    entry = read_manifest().get(lm.arch, {}) if not cfg.weights and not cfg.random_init else {}
    candidates = []
    if entry.get("dplot_bundle", {}).get("file"):
        candidates.append((WEIGHTS_DIR / entry["dplot_bundle"]["file"], "committed bundle of the committed weights"))
    candidates.append((default_bundle_path(lm.arch), "tta-perception prepare output for these weights"))
    want = cfg.prepare_profile  # a preset's amounts: only a bundle prepared with them
    for path, how in candidates:
        if not path.is_file():
            continue
        try:
            b = load_bundle(path)
        except Exception:
            continue
        profile = (b.metadata.get("prepare") or {}).get("profile", "default")
        if b.metadata.get("weights_id") == lm.weights_id and want in (None, profile):
            return b, {"path": str(path), "how": how}
    s = prepare_settings(cfg)
    path = cached_bundle_path(Path(cfg.cache), lm.arch, s.key(lm.weights_id, lm.arch))
    if path.is_file():
        return load_bundle(path), {"path": str(path), "how": f"cached phase A ({s.profile} amounts)"}
    log(f"no bundle for these weights: running phase A ({s.profile} amounts; `tta-perception prepare` for more)")
    res = run_prepare(lm.model, s, arch=lm.arch, weights_id=lm.weights_id, weights_desc=lm.weights_desc,
                      cache_dir=Path(cfg.cache), progress=cfg.progress, log=log)
    save_bundle(res.bundle, path)
    log(f"cached the bundle at {path} ({res.seconds:.0f} s)")
    return res.bundle, {"path": str(path), "how": f"prepared now ({s.profile} amounts, {res.seconds:.0f} s)"}


def fisher_source(cfg: BenchConfig):
    """Source batches for EATA's Fisher information (clean source images, labels unused)."""
    try:
        s = prepare_settings(cfg)
    except ValueError:
        return None, "no source data: EATA runs without the Fisher term (ETA)"
    batches = source_batches(s, Path(cfg.cache), cfg.progress)
    return batches, f"{s.samples} source samples ({s.source})"


def rmt_warmup(cfg: BenchConfig, lm, bundle, batch_size: int, log: Callable[[str], None] = _log):
    """RMT's own warm-up for classification (``rmt.py``: at the test batch size, Adam state kept),
    cached; (None, reason) for segmentation (RMT keeps the bundle's warm-up there) or without source data."""
    from .prepare import rmt_warmup_state

    if cfg.task != "cls":
        return None, {"how": "bundle: segmentation RMT keeps the phase-A warm-up (no official segmentation RMT)"}
    try:
        s = prepare_settings(cfg)
    except ValueError:
        return None, {"how": "bundle: no source data for RMT's own warm-up"}
    state, info = rmt_warmup_state(lm.model, s, arch=lm.arch, weights_id=lm.weights_id, batch_size=batch_size,
                                   bundle=bundle, cache_dir=Path(cfg.cache), progress=cfg.progress, log=log)
    return state, info


def seed_methods(cfg: BenchConfig, first_rows: dict[str, Any], key: str, task: str) -> list[str]:
    """The methods that run the seeds after the first: ``seeds_for`` with "bestK" replaced by the K best
    prior methods (other than DPLOT) of the first seed on ``key``."""
    if cfg.seeds_for is None:
        return list(cfg.methods)
    out: list[str] = []
    for spec in cfg.seeds_for:
        if spec.startswith("best"):
            k = int(spec[4:] or 1)
            priors = [m for m in first_rows if VARIANTS[m].prior and m != "source"]
            ranked = sorted(priors, key=lambda m: first_rows[m][key] if task == "cls" else -first_rows[m][key])
            out += [m for m in ranked[:k] if m not in out]
        elif spec in cfg.methods and spec not in out:
            out.append(spec)
    return [m for m in cfg.methods if m in out]


def default_out(cfg: BenchConfig) -> Path:
    parts = [cfg.task if cfg.dataset == "world" else cfg.dataset, cfg.setting]
    if cfg.streaming:
        parts.append("stream" if cfg.predict == "method" else f"stream_{cfg.predict}")
        if cfg.bn_stats != "auto":
            parts.append(f"bn_{cfg.bn_stats}")
    if cfg.quick:
        parts.append("quick")
    if cfg.paper_scale:
        parts.append("paper")
    return Path("runs/bench") / "_".join(parts)


def run_suite(cfg: BenchConfig, log: Callable[[str], None] = _log) -> dict[str, Any]:
    import torch

    device = resolve_device(cfg.device, "--device")
    machine = machine_info(device)  # at the start: the load average before this run adds to it
    t_start = time.perf_counter()
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    out.mkdir(parents=True, exist_ok=True)
    command = "tta-perception " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    rundir = RunDir(out)  # config.json, cells/, checkpoints/: what --resume continues from
    rundir.start(asdict(cfg), torch.get_num_threads(), command, resume=cfg.resume, overwrite=cfg.overwrite,
                 explicit_out=cfg.out is not None)
    streams0 = build_streams(cfg, cfg.seeds[0])
    task = streams0[0].task
    lm = load_model(**model_spec(task, cfg.model, cfg.weights, cfg.random_init, cfg.allow_code_architecture), task=task,
                    num_classes=streams0[0].num_classes, device=device, label="--model", architecture_label="--model")
    if getattr(lm.model, "num_classes", None) != streams0[0].num_classes:
        raise ValueError(f"model {lm.arch} has {lm.model.num_classes} classes, the stream {streams0[0].num_classes}")
    bundle, bundle_info = (None, {})
    if needs_bundle(cfg.methods):
        bundle, bundle_info = resolve_bundle(cfg, lm, log)
        bundle_info.update(selected_blocks=list(bundle.selected_blocks),
                           scores={k: round(v, 6) for k, v in bundle.scores.items()},
                           prepare=bundle.metadata.get("prepare"), deviations=bundle.metadata.get("deviations"))
        log(f"bundle: {bundle_info['path']} ({bundle_info['how']}); selected blocks: "
            f"{', '.join(bundle.selected_blocks)}")
    fisher, fisher_desc = (None, "")
    if any(VARIANTS[m].method == "eata" for m in cfg.methods):
        fisher, fisher_desc = fisher_source(cfg)
    ceiling = load_ceiling(cfg, lm, task, streams0[0].num_classes, device, log)
    warm, warm_info = (None, {})
    if any(VARIANTS[m].method == "rmt" for m in cfg.methods) and not cfg.streaming:
        warm, warm_info = rmt_warmup(cfg, lm, bundle, streams0[0].batch_size, log)
    bars = cfg.progress and sys.stdout.isatty()  # a log (--detach, a pipe) gets one line per interval instead
    opts_base = dict(device=device, streaming=cfg.streaming, window=cfg.window, adapt_every=cfg.adapt_every,
                     background=cfg.background, predict_mode=cfg.predict, bn_stats=cfg.bn_stats, safety=cfg.safety,
                     progress=bars, progress_lines=not bars, flow_preset=cfg.flow_preset, resume=cfg.resume,
                     checkpoint_dir=rundir.checkpoints if cfg.streaming else None,
                     weights_id=f"{lm.weights_id}; bundle {bundle_info.get('path', '')}",
                     quality_model=quality_model(cfg, task), quality_source_every=cfg.quality_source_every)
    fused = [m for m in cfg.methods if VARIANTS[m].fused]
    if fused and not (cfg.streaming and task == "seg" and cfg.temporal_fusion > 0):
        raise ValueError(f"{', '.join(fused)}: fused rows need --stream on segmentation and --temporal-fusion W > 0")
    if any(VARIANTS[m].domain_memory for m in cfg.methods):  # the detector's clear-source calibration
        from ..runtime.model_loader import domain_calibration

        opts_base["domain_calibration"] = domain_calibration(lm.arch if cfg.weights is None else "",
                                                             "" if cfg.weights is None else lm.arch)
    runs = []
    rt_runs: list = []
    saved_costs = rundir.load_json("realtime_costs") if cfg.resume else None
    rt_costs, rt_from = (tuple(saved_costs) if saved_costs else
                         realtime_costs(cfg, lm, streams0[0], opts_base, bundle, fisher, log))
    if rt_costs is not None:
        rundir.save_json("realtime_costs", [rt_costs, rt_from])  # a resumed run's clock uses the same costs
    src_fwd: dict[str, list[float]] = {}
    methods_of_seed = list(cfg.methods)
    cells = open_cells(cfg.ray, torch.get_num_threads(), 1.0 if device.type == "cuda" else 0.0, cfg.progress, log)
    if cfg.ray:
        log(f"cells as Ray tasks: {cells.engine}")
    metric = "error" if task == "cls" else "mIoU"
    resumed_cells = 0

    def method_done(r, seconds: float) -> None:
        runs.append(r)
        runs.extend(r.companions)
        for rr in (r, *r.companions):
            flick = f"  flicker {rr.flicker_overall:5.2f} %" if rr.flicker else ""
            log(f"  seed {rr.seed} {rr.stream:<11} {rr.method:<14} {metric} {rr.overall:6.2f}{flick}  "
                f"{rr.ms_per_frame:8.2f} ms/frame  {seconds:6.1f} s")

    try:
        for si, seed in enumerate(cfg.seeds):
            if si == 1 and cfg.seeds_for is not None:
                cells.drain()
                first = aggregate(streams0[0], runs, cfg.methods)
                methods_of_seed = seed_methods(cfg, first, "mean", task)
                log(f"seeds {', '.join(map(str, cfg.seeds[1:]))}: {', '.join(methods_of_seed)}")
            streams = streams0 if si == 0 else build_streams(cfg, seed)
            for st in streams:
                opts = RunOptions(seed=seed, checkpoint_every=checkpoint_every(cfg, st), **opts_base)
                src_fwd.setdefault(st.name, []).append(source_forward_ms(lm.model, st, opts))
                for m in methods_of_seed:
                    if VARIANTS[m].fused:
                        continue  # scored in the run of its base method
                    modes = tuple(mode for sfx, mode in FUSION_SUFFIXES.items() if m + sfx in methods_of_seed)
                    tf = cfg.temporal_fusion if modes else 0.0
                    done = rundir.load_cell(st.name, m, seed) if cfg.resume else None
                    if done is not None:
                        cells.finished(*done, method_done)
                        resumed_cells += 1
                    else:  # saved as soon as it finishes: an interruption from then on keeps it
                        cells.submit(m, lm.model, st, replace(opts, temporal_fusion=tf,
                                                              fusion_modes=modes or ("fixed",)),
                                     bundle=bundle, fisher=fisher, warmup=warm, on_result=method_done,
                                     on_done=rundir.save_cell)
                    if rt_costs is not None:
                        done = rundir.load_cell(st.name, m, seed, "rt") if cfg.resume else None

                        def rt_done(r, sec):
                            rt_runs.append(realtime_done(r, cfg.realtime, sec, log))

                        if done is not None:
                            cells.finished(*done, rt_done)
                        else:
                            cells.submit(m, lm.model, st, replace(opts, realtime_hz=cfg.realtime,
                                                                  realtime_costs=rt_costs[m]),
                                         bundle=bundle, fisher=fisher, on_result=rt_done,
                                         on_done=lambda r, sec: rundir.save_cell(r, sec, "rt"))
                if ceiling is not None:
                    done = rundir.load_cell(st.name, CEILING, seed) if cfg.resume else None
                    if done is not None:
                        r = done[0]
                        ceiling.runs.append(r)
                    else:  # predict only: no checkpoints (its name would be source's), saved when done
                        r = ceiling.run(st, replace(opts, checkpoint_dir=None))
                        rundir.save_cell(r, 0.0)
                    log(f"  seed {seed} {st.name:<11} {'ceiling':<14} {r.overall:6.2f}  (the oracle, no adaptation)")
        cells.drain()
    finally:
        cells.close()
    if cfg.resume:
        log(f"resumed: {resumed_cells} finished cells loaded from {rundir.cells}")
    # ------------------------------------------------------------------ report
    proto = "streaming (batch of one frame)" if cfg.streaming else "batch protocol"
    payload: dict[str, Any] = {
        "command": command,
        "config": asdict(cfg), "machine": machine, "model": {"arch": lm.arch, "weights": lm.weights_desc,
                                                                          "weights_id": lm.weights_id},
        "bundle": bundle_info, "eata_fisher": fisher_desc, "rmt_warmup": warm_info, "protocol": proto,
        "streams": {}, "runs": [], "ceiling": ceiling.desc if ceiling else None,
        "timing_note": ("ms/frame: the method's own work per frame (step or predict, synchronised), excluding data "
                        "loading and scoring; x src fwd: that time over the source model's plain forward pass "
                        "measured in the same process on the same inputs"),
    }
    printed = []
    summary_rows: dict[str, Any] = {}
    for st in streams0:
        rows = aggregate(st, runs, cfg.methods)
        crow = ceiling.row(st) if ceiling is not None else None
        fwd = sum(src_fwd[st.name]) / len(src_fwd[st.name])
        add_ratios(with_ceiling(rows, crow), fwd)
        extra = ["seq"] if task == "seg" else (["all"] if cfg.setting == "gradual" else [])
        for r in with_ceiling(rows, crow).values():
            if task == "seg":
                r["seq"] = r["overall"]
            elif cfg.setting == "gradual":
                r["all"] = sum(r["all_domains"].values()) / max(1, len(r["all_domains"]))
        key = "seq" if task == "seg" else "mean"
        h = headline(rows, task, key)
        metric = "error %" if task == "cls" else "mIoU %"
        title = (f"{st.name} ({st.setting}, {proto}, batch {st.batch_size}): {metric}"
                 + (", seq = mIoU over the whole sequence" if task == "seg" else "")
                 + (", columns at severity 5, all = mean over every severity" if cfg.setting == "gradual" else ""))
        safe = st.name.replace("/", "_")
        gap_text, gap_block = report_ceiling(out, safe, rows, crow, st.columns, task, extra, ceiling)
        text = [format_table(with_ceiling(rows, crow), st.columns, title, extra), *gap_text, "",
                format_costs(rows, fwd, cfg.streaming), "", format_headline(h, task)]
        seeds_used = {m: r["seeds"] for m, r in rows.items()}
        if len(cfg.seeds) > 1:
            text.append("seeds: " + "; ".join(f"{m} {','.join(map(str, v))}" for m, v in seeds_used.items())
                        + " (cells: mean over a row's seeds, intervals below; `python -m tta_perception.bench.seeds "
                        + f"{out}/results.json` recomputes them from the file, prediction split included)")
        parts = aggregate_parts(st, runs, cfg.methods)
        if parts:
            text += ["", format_parts(parts, st.columns, rows)]
            write_parts_csv(out / f"parts_{safe}.csv", parts, st.columns, rows)
        if "source" in rows:
            src = rows["source"][key]
            better = [m for m, r in rows.items() if m != "source" and
                      ((r[key] < src) if task == "cls" else (r[key] > src))]
            text.append(f"better than source on {st.name}: {', '.join(better) or 'none'}")
        printed.append("\n".join(text))
        write_csv(out / f"table_{safe}.csv", with_ceiling(rows, crow), st.columns, extra)
        png = None
        if cfg.plot:
            seed0 = [r for r in runs if r.stream == st.name and r.seed == cfg.seeds[0]]
            png = plot_runs(out / f"stream_{safe}.png", st, seed0, title.split(":")[0])
        payload["streams"][st.name] = {"info": st.info, "setting": st.setting, "batch_size": st.batch_size,
                                       "columns": st.columns, "source_forward_ms": fwd, "rows": rows,
                                       "headline": h, "csv": str(out / f"table_{safe}.csv"), "parts": parts,
                                       "png": str(png) if png else None}
        if gap_block:
            payload["streams"][st.name]["ceiling"] = gap_block
        for m, r in with_ceiling(rows, crow).items():
            summary_rows.setdefault(m, {"cells": {}, "ms": [], "x": [], "mem": [], "kind": r["mem_kind"]})
            summary_rows[m]["cells"][st.name] = r[key]
            summary_rows[m]["ms"].append(r["ms_per_frame"])
            summary_rows[m]["x"].append(r["x_source_forward"])
            summary_rows[m]["mem"].append(r["peak_mem_mib"])
    if len(streams0) > 1:
        cols = [st.name for st in streams0]
        rows = {m: {"cells": s["cells"], "mean": sum(s["cells"].values()) / len(s["cells"]),
                    "ms_per_frame": sum(s["ms"]) / len(s["ms"]), "x_source_forward": sum(s["x"]) / len(s["x"]),
                    "peak_mem_mib": max(s["mem"]), "mem_kind": s["kind"]} for m, s in summary_rows.items()}
        crow = rows.pop(CEILING, None)
        h = headline(rows, task, "mean")
        metric = "error %" if task == "cls" else "mIoU % over each whole sequence"
        gap_text, gap_block = report_ceiling(out, "summary", rows, crow, cols, task, (), ceiling)
        printed.append("\n".join([format_table(with_ceiling(rows, crow), cols, f"summary ({cfg.setting}, {proto}): "
                                               f"{metric}"), *gap_text, "", format_headline(h, task)]))
        write_csv(out / "summary.csv", with_ceiling(rows, crow), cols)
        payload["summary"] = {"columns": cols, "rows": rows, "headline": h, "csv": str(out / "summary.csv")}
        if gap_block:
            payload["summary"]["ceiling"] = gap_block
    evidence_text, payload["evidence"] = evidence_report(streams0, runs, cfg.methods, task, out, cfg.streaming)
    cycles_text, payload["cycles"] = cycles_report(streams0, runs, cfg.methods, out)
    temporal_text, payload["temporal"] = temporal_report(streams0, runs, cfg.methods, out)
    printed += evidence_text + cycles_text + temporal_text
    quality_text, quality_payload = quality_report(streams0, runs, cfg.methods, out, plot=cfg.plot,
                                                   model=quality_model(cfg, task))
    if quality_payload:
        printed += quality_text
        payload["quality"] = quality_payload
    guard_text, guard_payload = guard_report(streams0, runs, cfg.methods)
    if guard_payload:
        printed += guard_text
        payload["guard"] = guard_payload
    if cfg.streaming and task == "seg":
        long_text, long_payload = long_drive_report(streams0, runs, cfg.methods, out, plot=cfg.plot)
        if long_payload:  # only runs of >= 3 weather cycles with a source row: shorter runs' files unchanged
            printed += long_text
            payload["long_drive"] = long_payload
    if rt_costs is not None:
        rt_text, payload["realtime"] = realtime_report(streams0, runs, rt_runs, cfg.methods, task, cfg.realtime,
                                                       rt_costs, rt_from, out)
        printed += rt_text
        payload["realtime"]["runs"] = [r.summary() for r in rt_runs]
    payload["runs"] = [r.summary() for r in runs]
    payload["machine"]["load_avg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    payload["seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(out / "results.json", payload)
    atomic_write_text(out / "results.txt", "\n\n".join(printed) + "\n")  # the printed tables
    rundir.finish()
    log("")
    log("\n\n".join(printed))
    log(f"\nwrote {out}/results.json, results.txt, table_*.csv, ci_*.csv"
        + (", realtime.csv" if rt_costs is not None else "") + (", stream_*.png" if cfg.plot else "")
        + f" in {payload['seconds']:.0f} s")
    payload["out"] = str(out)
    return payload


def quality_model(cfg: BenchConfig, task: str) -> str | None:
    """Whose quality calibrations the streaming seg runs use: the embedded model's ('' for the user's
    own weights or an untrained model: uncalibrated); None (not scored) off the streaming seg protocol."""
    from ..runtime.model_loader import EMBEDDED_FOR_TASK

    if not (cfg.streaming and task == "seg"):
        return None
    if cfg.weights is not None or cfg.random_init:
        return ""
    return cfg.model or EMBEDDED_FOR_TASK[task]


def checkpoint_every(cfg: BenchConfig, stream) -> int:
    """Frames between a streaming cell's checkpoints: ``--checkpoint-every``, else one weather cycle
    of a looping sequence (its frames at the stream's stride), else none."""
    if not cfg.streaming:
        return 0
    if cfg.checkpoint_every is not None:
        return max(0, int(cfg.checkpoint_every))
    cycle = getattr(stream, "cycle_frames", None)
    return max(1, int(round(cycle / int(stream.info.get("stride") or 1)))) if cycle else 0


# ------------------------------------------------------------------------------------ real time
def realtime_costs(cfg: BenchConfig, lm, stream, opts_base: dict[str, Any], bundle, fisher,
                   log: Callable[[str], None] = _log) -> tuple[dict[str, Any] | None, str]:
    """``--realtime``: every method's per-frame predict and per-step adaptation cost, measured once
    on the first stream (or read from ``--realtime-costs``); (None, '') without ``--realtime``."""
    if not cfg.realtime:
        if cfg.realtime_costs:
            raise ValueError("--realtime-costs needs --realtime HZ")
        return None, ""
    if not cfg.streaming:
        raise ValueError("--realtime is a streaming protocol: add --stream")
    if cfg.background:
        raise ValueError("--realtime simulates the camera clock with inline adaptation; drop --background")
    opts = RunOptions(seed=cfg.seeds[0], **{**opts_base, "progress": False})
    return resolve_costs(cfg.methods, cfg.realtime_costs,
                         lambda m: measure_costs(m, lm.model, stream, opts, bundle=bundle, fisher_batches=fisher),
                         log)


def realtime_done(r, hz: float, seconds: float, log: Callable[[str], None] = _log):
    """Log one method's run under the simulated camera clock (``bench/realtime.py``); returns it."""
    rt = r.streaming.get("realtime", {})
    log(f"  seed {r.seed} {r.stream:<11} {r.method:<14} real time {hz:g} Hz: mIoU {r.overall:6.2f}, "
        f"{rt.get('steps', 0)} steps, {100 * rt.get('fraction_adapted', 0):.0f} % of frames adapted on  "
        f"{seconds:6.1f} s")
    return r
