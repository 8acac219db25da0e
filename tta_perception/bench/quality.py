"""The quality estimate's calibration (on labelled source data only) and its validation on the
benchmark's streams.

**Calibration** (``tta-perception calibrate-quality``): clear frames of the training worlds (world
seeds >= 1000, the source model's own data; never an evaluation world, never a weather sequence),
as one stream of segments of ``per_segment`` frames: clean, then generic corruptions at severities
3 and 5 (Gaussian noise, defocus and motion blur, contrast, JPEG, and two of ours: ``darken``, a
gamma and gain towards black, and ``low_light``, darkened then noisy), then clean again. The method
adapts online over it through the node's frame path, with the node's window and ``adapt_every``, and
each published output's signals (``runtime.quality.frame_signals``) are recorded beside its true
pixel accuracy. The signal set is chosen among :data:`FEATURE_SETS` by the lowest mean absolute
error when each corruption is left out of the fit in turn (so the choice is measured on corruptions
the fit has not seen), then fitted on every frame.

**Validation** (every ``bench --stream`` segmentation run): the estimate of every frame against its
true accuracy and mIoU, by ``metrics.quality.validate``; the frames below the source model are those
whose mIoU is below the ``source`` row's on the same frame.
"""
from __future__ import annotations

import copy
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..runtime.quality import FORMAT, SIGNALS, fit, frame_signals, transform
from .common import DEFAULT_CACHE, cache_key, cached_npz

CORRUPTIONS = ("gaussian_noise", "defocus_blur", "motion_blur", "contrast", "jpeg_compression", "darken", "low_light")
SEVERITIES = (3, 5)
# candidate signal sets, the plain mean confidence first (ATC's and DoC's signal)
FEATURE_SETS: tuple[tuple[str, ...], ...] = (
    ("conf",), ("conf", "ent"), ("conf", "pred_ent"), ("conf", "ent", "pred_ent"),
    ("conf", "lum", "contrast", "sharp"), ("conf", "pred_ent", "lum", "contrast", "sharp"),
    ("conf", "ent", "pred_ent", "lum", "contrast", "sharp"),
)
RENDER_SEED = 6           # training worlds of render seed 6 (calibrate-domains uses 5)
NOISE_SEED = 3


def darken(images: np.ndarray, severity: int) -> np.ndarray:
    """Towards black: gain 0.8 .. 0.3 and gamma 1.0 .. 1.4 at severity 1 .. 5 (uint8 NHWC)."""
    gain = (0.8, 0.65, 0.5, 0.4, 0.3)[severity - 1]
    gamma = (1.0, 1.1, 1.2, 1.3, 1.4)[severity - 1]
    x = images.astype(np.float32) / 255.0
    return np.clip(255.0 * gain * x ** gamma, 0, 255).round().astype(np.uint8)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = NOISE_SEED) -> np.ndarray:
    from ..world.corruptions import corrupt_images

    if name == "clean":
        return images
    if name == "darken":
        return darken(images, severity)
    if name == "low_light":
        return corrupt_images(darken(images, severity), "gaussian_noise", max(1, severity - 2), seed=seed)
    return corrupt_images(images, name, severity, seed=seed)


def calibration_plan() -> list[tuple[str, int]]:
    return [("clean", 0)] + [(c, s) for s in SEVERITIES for c in CORRUPTIONS] + [("clean", 0)]


def calibration_frames(per_segment: int = 40, size=(128, 256), seed: int = RENDER_SEED,
                       cache_dir: Path = DEFAULT_CACHE, progress: bool = True) -> dict[str, np.ndarray]:
    """The calibration stream (cached): ``rgb``, ``labels``, ``segment`` ('<corruption>@<severity>')."""
    from ..training import render_seg_set

    plan = calibration_plan()
    groups = 6  # distinct clear frames: 6 groups of ``per_segment``, cycled over the segments

    def build():
        rgb, lab = render_seg_set(per_segment * groups, seed=seed, size=tuple(size), progress=progress)
        xs, ys, names = [], [], []
        for k, (c, s) in enumerate(plan):
            sl = slice((k % groups) * per_segment, (k % groups + 1) * per_segment)
            xs.append(corrupt(rgb[sl], c, s))
            ys.append(lab[sl])
            names += [f"{c}@{s}" if s else c] * per_segment
        return {"rgb": np.concatenate(xs), "labels": np.concatenate(ys), "segment": np.array(names)}

    key = cache_key(kind="quality_calibration", plan=plan, per_segment=per_segment, size=list(size), seed=seed,
                    noise=NOISE_SEED)
    return cached_npz(Path(cache_dir) / "quality" / f"calibration_{per_segment}_{key}.npz", build)


def collect(method: Any, frames: dict[str, np.ndarray], *, window: int = 4, adapt_every: int = 4,
            progress: bool = True, desc: str = "", source_quality: Any = None) -> list[dict[str, Any]]:
    """``method`` adapting online over the calibration stream through the frame path: per frame its
    signals, true pixel accuracy and segment; with ``source_quality`` (the source calibration's
    estimator) also what the collapse guard reads (``runtime.guard``): the agreement with the source
    model, the class-entropy ratio and the source model's estimated accuracy on the frame."""
    import torch
    from tqdm.auto import tqdm

    from ..metrics import ConfusionMatrix
    from ..runtime.adapter import build_adapter
    from ..runtime.frame_path import FramePath
    from ..runtime.preprocess import to_tensor

    from ..runtime.guard import classes_kept
    from ..runtime.reference import source_model

    adapter = build_adapter(method, window=window, adapt_every=adapt_every, background=False)
    path = FramePath(adapter, flow=False)
    src = source_model(adapter) if source_quality is not None else None
    rows = []
    try:
        for i in tqdm(range(len(frames["rgb"])), desc=desc or "calibration stream", unit="frame",
                      disable=not progress, leave=False):
            x = to_tensor(frames["rgb"][i:i + 1]).to(method.device)
            rec = path.run(x)[0]
            s = frame_signals(rec.output, x[0])
            cm = ConfusionMatrix(method.num_classes)
            cm.update(rec.output.argmax(0).cpu().numpy(), frames["labels"][i])
            row = {**s, "accuracy": cm.accuracy(), "segment": str(frames["segment"][i])}
            if src is not None:
                with torch.no_grad():
                    so = src(x)[0]
                ss = frame_signals(so, x[0])
                pred, spred = rec.logits.argmax(0), so.argmax(0)
                row.update(agreement=float((pred == spred).float().mean()),
                           kept=classes_kept(pred, spred, int(so.shape[0])),
                           class_ratio=frame_signals(rec.logits)["pred_ent"] / max(ss["pred_ent"], 1e-6),
                           source_estimate=source_quality.estimate(ss))
            rows.append(row)
    finally:
        adapter.close()
    return rows


def _mae(rows: Sequence[dict], weights: Sequence[float], features: Sequence[str]) -> float:
    err = []
    for r in rows:
        z = weights[0] + sum(w * transform(f, r[f]) for f, w in zip(features, weights[1:]))
        err.append(abs(1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0))) - r["accuracy"]))
    return 100.0 * float(np.mean(err))


def choose_and_fit(rows: Sequence[dict[str, Any]], feature_sets: Sequence[Sequence[str]] = FEATURE_SETS
                   ) -> dict[str, Any]:
    """The feature set with the lowest leave-one-corruption-out MAE, fitted on every row."""
    rows = [r for r in rows if all(math.isfinite(r.get(f, float("nan"))) for f in SIGNALS if f in r)]
    groups = sorted({r["segment"].split("@")[0] for r in rows} - {"clean"})
    table = {}
    for feats in feature_sets:
        errs = []
        for g in groups:
            train = [r for r in rows if r["segment"].split("@")[0] != g]
            test = [r for r in rows if r["segment"].split("@")[0] == g]
            w = fit(train, [r["accuracy"] for r in train], feats)
            errs.append(_mae(test, w, feats))
        table["+".join(feats)] = {"cv_mae_points": float(np.mean(errs)), "cv_worst_points": float(np.max(errs))}
    best = min(feature_sets, key=lambda f: table["+".join(f)]["cv_mae_points"])
    weights = fit(rows, [r["accuracy"] for r in rows], best)
    return {"format": FORMAT, "features": list(best), "weights": weights,
            "fit": {"frames": len(rows), "in_sample_mae_points": _mae(rows, weights, best),
                    "cv_mae_points": table["+".join(best)]["cv_mae_points"], "candidates": table,
                    "mean_accuracy": float(np.mean([r["accuracy"] for r in rows]))}}


def measure_gain_offset(rows: Sequence[dict[str, Any]], source_rows: Sequence[dict[str, Any]],
                cal: dict[str, Any]) -> dict[str, Any]:
    """The error of the estimated gain over the source model (the method's estimate minus the source
    model's own, ``runtime.quality``) against the true one (the two pixel accuracies) on the
    calibration stream, frame by frame: its median is the calibration's ``gain_offset``; the
    percentiles and the AUROC for the frames where the method is below source say how far to trust it."""
    from ..metrics.quality import auroc
    from ..runtime.quality import QualityEstimator

    q = QualityEstimator(cal)
    est = np.array([q.estimate(r) - r["source_estimate"] for r in rows])
    true = np.array([r["accuracy"] - s["accuracy"] for r, s in zip(rows, source_rows)])
    ok = np.isfinite(est) & np.isfinite(true)
    err = est[ok] - true[ok]
    if not len(err):
        return {}
    below = true[ok] < 0
    return {"gain_offset": round(float(np.median(err)), 4),
            "gain_error": {"frames": int(len(err)), **{f"p{k}": float(np.percentile(err, k)) for k in (10, 50, 90)},
                           "below_source_frames": int(below.sum()),
                           "auroc_below_source": auroc(-(est[ok] - float(np.median(err))), below)}}


def guard_signals(rows: Sequence[dict[str, Any]], reliable: float = 0.75, window: int = 6) -> dict[str, Any]:
    """What the collapse guard reads on a healthy method, on the frames where the source model is
    reliable (estimated accuracy >= ``reliable``): low percentiles of the agreement, the class ratio
    and the mean ``kept`` over ``window`` consecutive such frames (the guard's thresholds must stay
    below them)."""
    r = [x for x in rows if x.get("source_estimate", 0.0) >= reliable]
    if not r:
        return {"reliable_frames": 0}
    agree = np.array([x["agreement"] for x in r])
    ratio = np.array([x["class_ratio"] for x in r])
    out = {"reliable_frames": len(r), "frames": len(rows),
           **{f"agreement_p{q}": float(np.percentile(agree, q)) for q in (1, 5, 50)},
           **{f"class_ratio_p{q}": float(np.percentile(ratio, q)) for q in (1, 5, 50)}}
    if "kept" in r[0] and len(r) >= window:
        kept = np.array([x["kept"] for x in r])
        means = np.convolve(kept, np.ones(window) / window, mode="valid")
        out.update({f"kept_p{q}": float(np.percentile(kept, q)) for q in (1, 5, 50)},
                   kept_window=window, **{f"kept_mean_p{q}": float(np.percentile(means, q)) for q in (1, 5, 50)})
    return out


def calibrate_methods(model_name: str, methods: Sequence[str], *, per_segment: int = 40, window: int = 4,
                      size: tuple[int, int] = (128, 256),
                      adapt_every: int = 4, cache_dir: Path = DEFAULT_CACHE, progress: bool = True,
                      log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """One calibration per method for the embedded model ``model_name`` (module docstring)."""
    import torch

    from ..models.checkpoint import read_manifest
    from ..paths import WEIGHTS_DIR
    from ..runtime.model_loader import load_model
    from .variants import VARIANTS, build_variant

    manifest = read_manifest()
    if model_name not in manifest:
        raise ValueError(f"--model must be an embedded model ({', '.join(sorted(manifest))}), got {model_name!r}")
    lm = load_model(model_name)
    if lm.model.task != "seg":
        raise ValueError(f"{model_name}: the quality estimate is calibrated for segmentation models")
    bad = [m for m in methods if m not in VARIANTS or VARIANTS[m].fused or VARIANTS[m].domain_memory]
    if bad:
        raise ValueError(f"cannot calibrate {', '.join(bad)}: give engine methods (source, norm, tent, eata, sar, "
                         "cotta, rmt, dplot)")
    bundle = fisher = None
    if any(VARIANTS[m].bundle != "none" for m in methods):
        from ..engine.bundle import load_bundle

        entry = manifest[model_name].get("dplot_bundle", {})
        if not entry.get("file"):
            raise ValueError(f"{model_name} has no committed DPLOT bundle (tta-perception prepare)")
        bundle = load_bundle(WEIGHTS_DIR / entry["file"])
    if any(VARIANTS[m].method == "eata" for m in methods):
        from .prepare import PrepareSettings, source_batches

        fisher = source_batches(PrepareSettings.for_task("seg", "default", size=tuple(size)), Path(cache_dir), progress)
    frames = calibration_frames(per_segment, tuple(size), cache_dir=Path(cache_dir), progress=progress)
    from ..runtime.quality import QualityEstimator

    out: dict[str, dict[str, Any]] = {}
    command = "tta-perception " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    methods = ["source", *[m for m in methods if m != "source"]]  # the guard's reference first
    source_rows: list[dict[str, Any]] = []
    for m in methods:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        method = build_variant(m, copy.deepcopy(lm.model), bundle=bundle, fisher_batches=fisher)
        sq = QualityEstimator(out["source"]) if m != "source" and VARIANTS[m].method != "source" else None
        rows = collect(method, frames, window=window, adapt_every=adapt_every, progress=progress,
                       desc=f"calibrate {m}", source_quality=sq)
        cal = choose_and_fit(rows)
        if sq is not None:
            cal["guard_signals"] = guard_signals(rows)
            cal.update(measure_gain_offset(rows, source_rows, cal))
        else:
            source_rows = rows
        cal.update(method=m, window=window, adapt_every=adapt_every, command=command,
                   data=f"{len(rows)} frames of the training worlds (render seed {RENDER_SEED}): clean and "
                        f"{', '.join(CORRUPTIONS)} at severities {', '.join(map(str, SEVERITIES))}, "
                        f"{per_segment} frames per segment")
        out[m] = cal
        f = cal["fit"]
        g = cal.get("guard_signals") or {}
        if g.get("reliable_frames"):
            log(f"  guard signals on {g['reliable_frames']} frames the source is reliable on: agreement p1/p5/p50 "
                f"{g['agreement_p1']:.2f}/{g['agreement_p5']:.2f}/{g['agreement_p50']:.2f}, class ratio "
                f"{g['class_ratio_p1']:.2f}/{g['class_ratio_p5']:.2f}/{g['class_ratio_p50']:.2f}, classes kept "
                f"(mean of {g.get('kept_window', 0)}) p1/p5/p50 {g.get('kept_mean_p1', float('nan')):.2f}/"
                f"{g.get('kept_mean_p5', float('nan')):.2f}/{g.get('kept_mean_p50', float('nan')):.2f}")
        if cal.get("gain_error"):
            e = cal["gain_error"]
            log(f"  estimated gain over the source model: error p10/p50/p90 {e['p10']:+.3f}/{e['p50']:+.3f}/"
                f"{e['p90']:+.3f} (gain_offset {cal['gain_offset']:+.4f}); AUROC for the {e['below_source_frames']} "
                f"frames below the source model {e['auroc_below_source']:.2f}")
        log(f"{model_name} {m:<6} features {'+'.join(cal['features']):<40} leave-one-corruption-out MAE "
            f"{f['cv_mae_points']:5.1f} points (in sample {f['in_sample_mae_points']:4.1f}; mean accuracy "
            f"{100 * f['mean_accuracy']:.1f} %)  {time.perf_counter() - t0:5.0f} s")
    return out


# ------------------------------------------------------------------------------------ validation in bench runs
def run_validation(run: Any, source: Any, window: int = 10, gain_offset: float = 0.0,
                   min_kept: float = float("nan")) -> Optional[dict[str, Any]]:
    """``metrics.quality.validate`` of one run against the source run on the same stream and seed
    (``gain_offset``, ``min_kept``: the method's calibration's)."""
    from ..metrics.quality import validate

    if not getattr(run, "series_quality", None):
        return None
    src = src_estimate = None
    if source is not None and list(source.series_x) == list(run.series_x):
        src = [v / 100.0 for v in source.series_y]
        if run is not source and len(source.series_quality) == len(run.series_x):
            src_estimate = source.series_quality  # the source model's own estimate on the same frames
    return validate(run.series_quality, run.series_level, run.series_accuracy, [v / 100.0 for v in run.series_y],
                    run.series_domain, src, window=window, source_estimate=src_estimate, gain_offset=gain_offset,
                    kept=getattr(run, "series_kept", None) or None, min_kept=min_kept)


KEYS = (("spearman_accuracy", "rho acc"), ("spearman_accuracy_window", "rho acc/10"), ("spearman_miou", "rho mIoU"),
        ("spearman_miou_window", "rho mIoU/10"), ("mae_points", "MAE"), ("auroc_below_source", "AUROC<src"),
        ("auroc_below_source_gain", "gain AUROC"), ("warn_recall_below_source", "WARN<src"),
        ("warn_rate_other_frames", "WARN other"), ("cost_percent", "cost %"))
#: the estimated gain over the source model: its AUROC and its flag (gain < threshold) per frame and per window
GAIN_KEYS = (("auroc_below_source_gain", "AUROC"), ("auroc_below_source_gain_window", "AUROC/10"),
             ("gain_recall_below_source", "<0 <src"), ("gain_rate_other_frames", "<0 other"),
             ("gain_recall_below_source_window@0", "/10 <src"), ("gain_rate_other_windows@0", "/10 other"),
             ("gain_recall_below_source_window@0.05", "/10 .05<src"), ("gain_rate_other_windows@0.05", "/10 .05oth"),
             ("gain_recall_below_source_window@0.1", "/10 .1<src"), ("gain_rate_other_windows@0.1", "/10 .1oth"))
#: the share of the source model's classes the outputs kept (live, --quality-source-every), and either flag
KEPT_KEYS = (("kept_known_frames", "known"), ("auroc_below_source_kept", "AUROC"), ("kept_recall_below_source", "<min <src"),
             ("kept_rate_other_frames", "<min other"), ("source_recall_below_source", "either <src"),
             ("source_rate_other_frames", "either oth"))


def _nanmean(values: Sequence[Any]) -> float:
    """The mean of the finite values (NaN, quietly, when there is none)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return math.fsum(v) / len(v) if v else float("nan")


def quality_report(streams: Sequence[Any], runs: Sequence[Any], methods: Sequence[str], out: Path,
                   plot: bool = True, model: Optional[str] = None) -> tuple[list[str], dict[str, Any]]:
    """Per stream and method: the validation of every seed, mean ± 95 % CI over seeds, the worst
    phase's MAE; printed table, ``quality_<stream>.csv``, results.json block and a plot. ``model``:
    the embedded model whose calibrations the runs used (their gain offsets; None or '': 0)."""
    from ..metrics import t_interval
    from ..runtime.quality import FROM_CALIBRATION, QualityEstimator, load_calibration
    from .output import write_rows_csv
    from .runner import runs_of
    from .variants import VARIANTS

    # each method's calibration: its gain offset and its calibrated kept threshold (the flag scored)
    estimators = {m: QualityEstimator(load_calibration(model or "", VARIANTS[m].method)[0], min_kept=FROM_CALIBRATION)
                  for m in methods if m in VARIANTS}
    offsets = {m: e.gain_offset for m, e in estimators.items()} if model else {}
    text, payload = [], {}
    for st in streams:
        rows, block = [], {}
        for m in methods:
            rs = runs_of(runs, m, st.name)
            vals = []
            for r in rs:
                src = next((s for s in runs_of(runs, "source", st.name) if s.seed == r.seed), None)
                est = estimators.get(m)
                v = run_validation(r, src, gain_offset=offsets.get(m, 0.0),
                                   min_kept=est.min_kept if est is not None else float("nan"))
                if v is not None:
                    # the estimate's time against the prediction's, on the same frames
                    v["cost_percent"] = 100.0 * float(r.streaming.get("quality_cost", float("nan")))
                    vals.append(v)
            if not vals:
                continue
            phases = list(vals[0]["mae_points_by_phase"])
            agg = {k: t_interval([v.get(k, float("nan")) for v in vals], 0.95) for k, _ in (*KEYS, *GAIN_KEYS, *KEPT_KEYS)}
            by_phase = {p: t_interval([v["mae_points_by_phase"].get(p, float("nan")) for v in vals], 0.95)
                        for p in phases}
            worst = max(phases, key=lambda p: by_phase[p].mean) if phases else ""
            block[m] = {"seeds": [r.seed for r in rs], "per_seed": vals,
                        "mean": {k: iv.as_dict() for k, iv in agg.items()},
                        "mae_points_by_phase": {p: iv.as_dict() for p, iv in by_phase.items()},
                        "warn_recall_below_source": _nanmean([v.get("warn_recall_below_source") for v in vals]),
                        "warn_rate_other_frames": _nanmean([v.get("warn_rate_other_frames") for v in vals]),
                        "levels": {k: int(sum(v["levels"][k] for v in vals)) for k in ("OK", "WARN", "ERROR")}}
            rows.append({"method": m, **{k: agg[k].mean for k, _ in (*KEYS, *GAIN_KEYS, *KEPT_KEYS)}, "worst_phase": worst,
                         "worst_phase_mae": by_phase[worst].mean if worst else float("nan"),
                         **{f"mae_{p}": by_phase[p].mean for p in phases}})
        if not rows:
            continue
        safe = st.name.replace("/", "_")
        write_rows_csv(Path(out) / f"quality_{safe}.csv", rows)
        n = len(next(iter(block.values()))["seeds"])
        lines = [f"{st.name}: label-free quality estimate against the truth (mean over {n} seed{'s' if n > 1 else ''}; "
                 "rho = Spearman per frame and per 10 frames, MAE in pixel-accuracy points, AUROC of a low "
                 "estimate for the frames below the source model; gain AUROC: of the estimate minus the source "
                 "model's own on the same frame, which needs the source model run beside the method (table "
                 "below); WARN<src / WARN other: the share of the frames below / not below the source model at "
                 "WARN or ERROR, from the estimate and, with --quality-source-every, the gain)",
                 f"{'method':<12}" + "".join(f"{h:>12}" for _, h in KEYS) + f"{'worst phase MAE':>22}"]
        for r in rows:
            lines.append(f"{r['method']:<12}" + "".join(f"{r[k]:>12.2f}" for k, _ in KEYS)
                         + f"{r['worst_phase']:>14} {r['worst_phase_mae']:>7.1f}")
        gains = [r for r in rows if math.isfinite(r["auroc_below_source_gain"])]
        if gains:
            w = int(vals[0].get("window", 10))
            lines += ["", f"{st.name}: the estimated gain over the source model (output's estimate - the source model's "
                      f"own - the calibration's offset) for the frames below the source model: AUROC per frame and "
                      f"per {w} frames; the share of the frames (windows) below source whose gain is below 0 (the "
                      f"node's WARN at quality_gain_warn_below 0) beside the share of the others; the same for "
                      f"windows at thresholds 0.05 and 0.1",
                      f"{'method':<12}" + "".join(f"{h:>12}" for _, h in GAIN_KEYS)]
            lines += [f"{r['method']:<12}" + "".join(f"{r[k]:>12.2f}" for k, _ in GAIN_KEYS) for r in gains]
        kept = [r for r in rows if math.isfinite(r["kept_known_frames"])]
        if kept:
            lines += ["", f"{st.name}: the share of the source model's classes the outputs keep (mean over the camera's "
                      f"last frames the source model is reliable on) for the frames below the source model: the share "
                      f"of frames where it is known, its AUROC there, the share of the frames below / not below source "
                      f"it flags (below the method's threshold: WARN), and the same for either flag (gain < 0 or kept)",
                      f"{'method':<12}" + "".join(f"{h:>12}" for _, h in KEPT_KEYS)]
            lines += [f"{r['method']:<12}" + "".join(f"{r[k]:>12.2f}" for k, _ in KEPT_KEYS) for r in kept]
        text.append("\n".join(lines))
        payload[st.name] = {"methods": block, "csv": str(Path(out) / f"quality_{safe}.csv")}
        if plot:
            payload[st.name]["png"] = str(plot_quality(Path(out) / f"quality_{safe}.png", st, runs, list(block)))
    return text, payload


def plot_quality(path: Path, stream: Any, runs: Sequence[Any], methods: Sequence[str], smooth: int = 10) -> Path:
    """Estimate and true pixel accuracy over the drive (first seed), one panel per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runner import runs_of

    methods = [m for m in methods if runs_of(runs, m, stream.name)]
    fig, axes = plt.subplots(len(methods), 1, figsize=(11, 2.2 * len(methods) + 0.6), sharex=True, squeeze=False)
    k = np.ones(smooth) / smooth
    for ax, m in zip(axes[:, 0], methods):
        r = runs_of(runs, m, stream.name)[0]
        x = np.asarray(r.series_x)
        for vals, lab, kw in ((r.series_accuracy, "true pixel accuracy", {"color": "black", "lw": 1.0}),
                              (r.series_quality, "estimate", {"color": "tab:orange", "lw": 1.2})):
            v = 100 * np.asarray(vals, float)
            ax.plot(x[: len(v) - smooth + 1] if len(v) >= smooth else x, np.convolve(v, k, "valid") if len(v) >= smooth else v,
                    label=lab, **kw)
        ax.set_ylabel(f"{m}\n%")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="lower left", fontsize=8)
    axes[-1, 0].set_xlabel(f"frame ({smooth}-frame means)")
    fig.suptitle(f"{stream.name}: estimated vs true pixel accuracy")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # room for the title
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ the collapse guard
def guard_report(streams: Sequence[Any], runs: Sequence[Any], methods: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Per stream, each adapting method with and without the collapse guard ('<m>+g'): its checks and
    recoveries (per hour of driving), and the worst per-cycle (and phase-in-a-cycle) mIoU gap to the
    source model on the same frames, averaged over seeds per cycle, and what the guard changed (the
    drive's mIoU with the guard minus without, per seed). A recovery counts as false when it cost:
    the recoveries of a seed whose guarded drive ends more than 0.1 mIoU below its unguarded one (a
    recovery that throws away a collapsing state is not false, even on a run that never fell below
    source over whole cycles)."""
    from .long_drive import drive_hours
    from .runner import runs_of
    from .variants import VARIANTS

    text, payload = [], {}
    for st in streams:
        fps, stride = float(st.info.get("fps") or 0), int(st.info.get("stride") or 1)
        src = {r.seed: r for r in runs_of(runs, "source", st.name)}
        block = {}

        def worst(m: str) -> tuple[float, float]:
            # per cycle: the mean over seeds of the gaps, then the worst cycle
            rs = [r for r in runs_of(runs, m, st.name) if r.seed in src]
            if not rs:
                return float("nan"), float("nan")
            cyc: dict[Any, list[float]] = {}
            ph: dict[Any, list[float]] = {}
            for r in rs:
                s = src[r.seed]
                for c in r.miou_by_cycle:
                    if c in s.miou_by_cycle:
                        cyc.setdefault(c, []).append(r.miou_by_cycle[c] - s.miou_by_cycle[c])
                for k in r.domains_by_cycle:
                    if k in s.domains_by_cycle:
                        ph.setdefault(k, []).append(r.domains_by_cycle[k] - s.domains_by_cycle[k])
            return (min((float(np.mean(v)) for v in cyc.values()), default=float("nan")),
                    min((float(np.mean(v)) for v in ph.values()), default=float("nan")))

        for m in methods:
            if not VARIANTS[m].guard:
                continue
            rs = [r for r in runs_of(runs, m, st.name) if r.streaming.get("guard")]
            if not rs:
                continue
            counts = {k: int(sum(r.streaming["guard"].get(k, 0) for r in rs))
                      for k in ("guard_checks", "guard_bad_checks", "guard_recoveries", "guard_to_source")}
            hours = math.fsum(drive_hours(r, fps, stride) for r in rs) if fps > 0 else float("nan")
            base = m[:-2]
            wb, wb_phase = worst(base)
            wg, wg_phase = worst(m)
            healthy = bool(wb == wb and wb >= -1.0)
            per_hour = counts["guard_recoveries"] / hours if hours and hours == hours else float("nan")
            bases = {r.seed: r for r in runs_of(runs, base, st.name)}
            gains = {r.seed: r.overall - bases[r.seed].overall for r in rs if r.seed in bases}
            false = sum(int(r.streaming["guard"].get("guard_recoveries", 0)) for r in rs
                        if r.seed in gains and gains[r.seed] < -0.1)
            block[m] = {**counts, "seeds": [r.seed for r in rs], "hours": hours, "recoveries_per_hour": per_hour,
                        "base": base, "base_worst_cycle_gap": wb, "base_worst_phase_gap": wb_phase,
                        "worst_cycle_gap": wg, "worst_phase_gap": wg_phase, "base_healthy": healthy,
                        "gain_by_seed": gains, "gain": float(np.mean(list(gains.values()))) if gains else float("nan"),
                        "false_recoveries": false if gains else None,
                        "false_recoveries_per_hour": (false / hours if hours and hours == hours else float("nan"))
                        if gains else None,
                        "guard_ms": float(np.mean([r.streaming.get("guard_ms", float("nan")) for r in rs]))}
        if not block:
            continue
        lines = [f"{st.name}: collapse guard (recoveries over {next(iter(block.values()))['hours']:.2f} h of driving "
                 "summed over seeds; worst gap = the worst cycle's mIoU minus the source model's on the same "
                 "frames, mean over seeds; gain = the drive's mIoU with the guard minus without; recoveries of a "
                 "seed the guard cost > 0.1 mIoU are false)",
                 f"{'method':<12}{'checks':>8}{'bad':>6}{'recov.':>8}{'/hour':>7}{'to src':>8}"
                 f"{'worst cycle gap':>17}{'(without)':>11}{'worst phase gap':>17}{'(without)':>11}{'gain':>7}{'false/h':>9}"]
        for m, b in block.items():
            fh = "–" if b["false_recoveries_per_hour"] is None else f"{b['false_recoveries_per_hour']:.2f}"
            lines.append(f"{m:<12}{b['guard_checks']:>8}{b['guard_bad_checks']:>6}{b['guard_recoveries']:>8}"
                         f"{b['recoveries_per_hour']:>7.2f}{b['guard_to_source']:>8}{b['worst_cycle_gap']:>+17.1f}"
                         f"{b['base_worst_cycle_gap']:>+11.1f}{b['worst_phase_gap']:>+17.1f}"
                         f"{b['base_worst_phase_gap']:>+11.1f}{b['gain']:>+7.2f}{fh:>9}")
        text.append("\n".join(lines))
        payload[st.name] = block
    return text, payload
