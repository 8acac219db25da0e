"""replay: run the adaptation over a recorded camera bag (Image or CompressedImage, MCAP or sqlite3)
and write the outputs to a new bag with the same stamps; metrics when the bag has ground truth."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "replay a camera bag through the adaptation; outputs to a new bag, metrics if it has ground truth"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", type=Path, help="input bag folder (MCAP or sqlite3)")
    p.add_argument("--out", type=Path, required=True, help="output bag folder (refused if it exists)")
    add_settings(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output bag (only once the new one is complete)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted replay into --out from its last checkpoint (same options)")


def add_settings(p: argparse.ArgumentParser) -> None:
    """What a replay computes: topics, the node's settings, the output bag's form (``fleet`` shares them)."""
    p.add_argument("--topic", default=None, help="image topic (default: the bag's camera topic when "
                                                 "there is only one)")
    p.add_argument("--topics", default=None,
                   help="several cameras, one shared model: image topics, comma-separated (default: every "
                        "camera topic of a bag without a single one); outputs under <prefix>/<camera>/, "
                        "ground truth /<camera>/ground_truth/class_ids")
    p.add_argument("--truth-topic", default=None, help="mono8 ground-truth topic (default: "
                   "/camera/ground_truth/class_ids when present; '' to ignore it)")
    p.add_argument("--weather-topic", default=None, help="weather JSON topic (default: /weather when "
                                                         "present; '' to ignore it)")
    p.add_argument("--params-file", type=Path, default=None,
                   help="tta_node parameter file (config/adapt.yaml format), so the replay uses the node's "
                        "settings; options below override it")
    p.add_argument("--method", default=None, help="adaptation method (default: the node's, dplot)")
    p.add_argument("--model", default=None, help="embedded model name or checkpoint path (default driveseg)")
    p.add_argument("--architecture", default=None, help="architecture for a plain state dict: a registered "
                   "name, or 'module:function' (your own code, imported: only when given here)")
    p.add_argument("--bundle", default=None, help="DPLOT phase-A bundle (default: as the node finds it)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: the node's, auto)")
    p.add_argument("--window", type=int, default=None, help="adaptation window (node default 4)")
    p.add_argument("--adapt-every", type=int, default=None, help="adapt every N frames (node default 4)")
    p.add_argument("--seed", type=int, default=None, help="seed of the adaptation")
    p.add_argument("--output-size", choices=("input", "model"), default=None,
                   help="outputs at the camera size (default) or the model size")
    p.add_argument("--temporal-fusion", type=float, default=None, metavar="W",
                   help="segmentation: weight of the past in the written prediction, fused along the optical "
                        "flow (the node's temporal_fusion; default 0 = off; docs/video.md)")
    p.add_argument("--temporal-fusion-mode", choices=("fixed", "adaptive"), default=None,
                   help="with --temporal-fusion: the past at W everywhere, or at W times the current frame's "
                        "uncertainty per pixel (the node's temporal_fusion_mode; docs/video.md)")
    p.add_argument("--quality", action=argparse.BooleanOptionalAction, default=None,
                   help="write each output's label-free quality estimate on <prefix>/quality (the node's "
                        "'quality'; default on; docs/node.md)")
    p.add_argument("--quality-calibration", default=None, metavar="JSON",
                   help="quality calibration written by `tta-perception calibrate-quality` (default: the "
                        "embedded model's)")
    p.add_argument("--quality-source-every", type=int, default=None, metavar="N",
                   help="every N frames also estimate the source model's accuracy on the frame: the estimated "
                        "gain over not adapting, written with the estimate; a frame estimated below the source "
                        "model is WARN (the node's quality_source_every; default 0 = off)")
    p.add_argument("--guard", action=argparse.BooleanOptionalAction, default=None,
                   help="collapse guard: go back to the last healthy state (or the source) when the adaptation "
                        "collapses (the node's 'guard', default off; its guard_* settings from --params-file; "
                        "docs/node.md)")
    p.add_argument("--prefix", default="/tta", help="namespace of the output topics")
    p.add_argument("--overlay", action="store_true", help="also write the rgb8 overlay")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="output storage")
    p.add_argument("--bag-version", type=int, choices=(8, 9), default=8, help="output metadata version")
    p.add_argument("--background", action="store_true",
                   help="adapt on a background thread as the node does (default: inline, repeatable)")
    p.add_argument("--limit", type=int, default=None, help="only the first N frames")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip frames that cannot be decoded and the MCAP chunks that fail their CRC or "
                        "cannot be read, counting them (default: stop with a one-line error, nothing "
                        "written)")
    p.add_argument("--no-plot", action="store_true", help="no PNG plot of the metrics")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="frames between checkpoints (finished output part + adaptation state in "
                        "<out>.resume/), so an interrupted replay can be resumed; 0: none")


def settings(args: argparse.Namespace) -> tuple[dict, dict]:
    """(node configuration, ``ReplayOptions`` fields) of the options of :func:`add_settings`."""
    from ..runtime.params import node_config

    if args.limit is not None and args.limit <= 0:
        raise ValueError("--limit must be positive")
    if args.checkpoint_every < 0:
        raise ValueError("--checkpoint-every must be >= 0")
    overrides = {"method": args.method, "model": args.model, "architecture": args.architecture,
                 "bundle": args.bundle, "device": args.device, "window": args.window,
                 "adapt_every": args.adapt_every, "seed": args.seed, "output_size": args.output_size,
                 "temporal_fusion": args.temporal_fusion, "temporal_fusion_mode": args.temporal_fusion_mode,
                 "quality": args.quality, "quality_calibration": args.quality_calibration, "guard": args.guard,
                 "quality_source_every": args.quality_source_every}
    if args.architecture and ":" in args.architecture:  # the user's own command line: trusted
        overrides["allow_code_architecture"] = True
    cfg = node_config(overrides, args.params_file)
    if args.temporal_fusion_mode is not None and not cfg["temporal_fusion"]:
        raise ValueError("--temporal-fusion-mode: the mode of the fusion, which is off: add --temporal-fusion W")
    topics = [t.strip() for t in args.topics.split(",") if t.strip()] if args.topics else None
    return cfg, dict(topic=args.topic, topics=topics, truth_topic=args.truth_topic, weather_topic=args.weather_topic,
                     prefix=args.prefix, storage=args.storage, version=args.bag_version, overlay=args.overlay,
                     background=args.background, limit=args.limit, skip_bad=args.skip_bad, plot=not args.no_plot,
                     checkpoint_every=args.checkpoint_every)


def run(args: argparse.Namespace) -> int:
    from ..bags.replay import ReplayInterrupted, ReplayOptions, replay
    from ..metrics import format_table

    cfg, fields = settings(args)
    opts = ReplayOptions(**fields, overwrite=args.overwrite, progress=not args.no_progress, resume=args.resume)
    try:
        res = replay(args.bag, args.out, cfg, opts)
    except ReplayInterrupted as err:
        print(f"\n{err}")
        return 130
    for line in res.damage:
        print(f"tta-perception replay: warning: bag {args.bag}: {line}", file=sys.stderr)
    print(f"replayed {res.frames} frames of {args.bag} with {res.method!r}: {res.fps:.1f} frames/s "
          f"overall, {res.model_fps:.1f} frames/s in the model"
          + (f", {res.bad_frames} bad frames skipped" if res.bad_frames else "")
          + (f", {res.bad_chunks} damaged chunk(s) skipped ({res.skipped_messages} messages, "
             f"{res.skipped_frames} frames)" if res.bad_chunks else "")
          + (f", {res.skipped_messages} damaged message(s) skipped" if res.skipped_messages and not res.bad_chunks
             else ""))
    if res.table:
        print("\nmIoU % per weather phase (pixel accuracy in replay_domains.csv):")
        print(format_table(res.table))
    if res.camera_text:
        print("\n" + res.camera_text)
    # several cameras: the camera text already holds the estimate's validation (metrics.stream.format_quality)
    for line in summary_lines(res.quality, res.guard, validation=not res.camera_text):
        print(line)
    print(f"\nwrote {res.path}" + (f" (+ {', '.join(sorted(Path(f).name for f in res.files.values()))})"
                                     if res.files else ""))
    return 0


def summary_lines(quality: dict, guard: dict, validation: bool = True) -> list[str]:
    """The quality estimate and the collapse guard of a replay in a few lines (replay.json has it all);
    ``validation``: also the estimate against the ground truth."""
    lines = []
    if quality.get("frames"):
        levels = quality.get("levels", {})
        mean = quality.get("mean_estimate")
        lines.append("\nquality estimate: mean " + (f"{100 * mean:.1f} %" if mean is not None else "-")
                     + " pixel accuracy; frames " + ", ".join(f"{k} {v}" for k, v in levels.items())
                     + ("" if quality.get("calibrated") else " (uncalibrated: mean confidence)"))
        val = (quality.get("validation") or {}) if validation else {}
        if val.get("frames"):
            def num(key: str, fmt: str = "{:.2f}") -> str:
                v = val.get(key)
                return fmt.format(v) if isinstance(v, (int, float)) and v == v else "-"
            lines.append(f"  against the ground truth: Spearman {num('spearman_accuracy')} per frame, "
                         f"{num('spearman_accuracy_window')} per {val.get('window', 10)} frames; mean absolute "
                         f"error {num('mae_points', '{:.1f}')} points (bias {num('bias_points', '{:+.1f}')})")
    if guard:
        reason = guard.get("guard_last_reason") or ""
        lines.append(f"collapse guard: {guard.get('guard_checks', 0)} checks, {guard.get('guard_bad_checks', 0)} bad, "
                     f"{guard.get('guard_recoveries', 0)} recoveries ({guard.get('guard_to_source', 0)} to the source "
                     f"state), {guard.get('guard_blind_frames', 0)} blind frames kept out of the adaptation"
                     + (f"; last: {reason}" if reason else ""))
    return lines
