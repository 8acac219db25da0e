"""bench: every adaptation method on the same streams, side by side, as in the paper's tables."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_code_architecture, add_device

HELP = ("benchmark methods side by side: 15 corruptions on sign crops (cls, error %) or driving sequences "
        "(seg, mIoU), batch or streaming protocol; table + JSON/CSV/PNG + ms/frame + memory")

DATASETS = ("world", "cifar10_c", "cifar100_c", "imagenet_c", "carlatta", "folder")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("cls", "seg"), default=None,
                   help="the embedded world's streams (cls: sign crops, seg: driving sequences) for the model "
                        "--model names (default signnet / driveseg); implied by --dataset for public data")
    p.add_argument("--sequence", "--sequences", dest="sequence", default=None,
                   help="cls: corruptions; seg: comma list of day2night,clear2fog,clear2rain,dynamic (default: all "
                        "four); carlatta: its sequence names")
    p.add_argument("--methods", default=None,
                   help="comma list of methods and variants (source, norm, tent, eata, sar, cotta, rmt, dplot, "
                        "dplot-nobs, dplot-nobs-norm, dplot-nopair, tent+bs, eata+bs, sar+bs) or groups "
                        "default / ablations / all (default: 'default'; --quick: source,norm,tent,dplot)")
    p.add_argument("--setting", default="continual", choices=("continual", "gradual", "mixed", "reset_each_shift"))
    p.add_argument("--batch-size", type=int, default=None, help="batch protocol batch size (default: cls 64, seg 8)")
    p.add_argument("--stream", action="store_true",
                   help="streaming protocol: one frame at a time through StreamingAdapter")
    p.add_argument("--window", type=int, default=4, help="streaming: frames in the adaptation window")
    p.add_argument("--adapt-every", type=int, default=4, help="streaming: adapt once every N frames")
    p.add_argument("--background", action="store_true",
                   help="streaming: adapt in the background thread as the node does (not deterministic)")
    p.add_argument("--predict", choices=("method", "student", "teacher"), default="method",
                   help="streaming: predict with the method's own ensemble (DPLOT: student + teacher on both views, "
                        "4 passes) or with the student / the teacher alone (1 pass; a method without one keeps its own)")
    p.add_argument("--bn-stats", choices=("auto", "frame", "running"), default="auto",
                   help="streaming: BatchNorm of a frame at inference: its own statistics (frame), the EMA kept "
                        "by the adaptation steps (running); auto: frame for segmentation methods that adapt")
    p.add_argument("--quick", action="store_true",
                   help="smoke run of about a minute (few crops / frames: seg, 12 frames of each sequence, spread "
                        "over it, or the first 12 at the --stride given)")
    p.add_argument("--paper-scale", action="store_true",
                   help="cls: the paper's CIFAR protocol at the scale this CPU runs in about 2 h: batch 200, "
                        "2,000 crops per corruption, official phase-A amounts, test order shuffled per seed, "
                        "seeds 0,1,2 for DPLOT and the two best prior methods (docs/benchmark.md); explicit "
                        "options override its values")
    p.add_argument("--seeds", default=None,
                   help="comma list of seeds, each a full run that changes the stream (seg: the world; cls: the "
                        "corruption noise and the crop order) and the methods' randomness; seed 0 is the original "
                        "stream. With several: every cell as mean ± 95 %% CI (Student t) and DPLOT paired against "
                        "the best prior method (default 0; --paper-scale: 0,1,2)")
    p.add_argument("--realtime", type=float, default=None, metavar="HZ",
                   help="streaming: also run the real-time protocol (Alfarra et al., ICML 2024): the stream's frames "
                        "arrive at HZ on a simulated clock, a step starts only when the adaptation worker is idle and "
                        "its weights are used once it would have finished; costs measured once per method")
    p.add_argument("--realtime-costs", type=Path, default=None, metavar="FILE",
                   help="with --realtime: reuse the per-method costs recorded in an earlier run's results.json "
                        "(exact repetition)")
    p.add_argument("--seeds-for", default=None,
                   help="methods that run every seed, the others only the first: comma list of names and bestK "
                        "(the K best prior methods of the first seed); default: every method")
    p.add_argument("--shuffle", action="store_true",
                   help="cls: one test order for every corruption drawn from the seed (the reference framework's "
                        "loader); default: seed 0 the render order, other seeds a permutation per corruption")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/bench/<task>_<setting>...)")
    # data
    p.add_argument("--n", type=int, default=None,
                   help="cls: held-out crops per corruption (default 512; --quick 16); public: samples per domain")
    p.add_argument("--severity", type=int, default=5, help="cls: corruption severity (continual/mixed/reset)")
    p.add_argument("--corruptions", default=None, help="cls: comma list subset (default: all 15, standard order)")
    p.add_argument("--frames", type=int, default=None, help="seg: stop at this frame index (default: whole sequence)")
    p.add_argument("--start", type=int, default=0, help="seg: first frame")
    p.add_argument("--stride", type=int, default=None, help="seg: use every k-th frame (default 1)")
    p.add_argument("--size", default="128x256", help="seg: render size HEIGHTxWIDTH")
    p.add_argument("--workers", type=int, default=2, help="seg: render processes")
    p.add_argument("--dataset", default="world", choices=DATASETS, help="public benchmark instead of the embedded world")
    p.add_argument("--data-root", type=Path, default=None, help="root of the public test data")
    p.add_argument("--source-root", type=Path, default=None,
                   help="public source data (for the automatic prepare and EATA's Fisher)")
    # model / DPLOT
    p.add_argument("--model", default=None, help="architecture (default: signnet / driveseg)")
    p.add_argument("--weights", type=Path, default=None, help="checkpoint (default: the committed source model)")
    p.add_argument("--random-init", action="store_true", help="untrained model (smoke tests only)")
    add_code_architecture(p)
    p.add_argument("--bundle", type=Path, default=None,
                   help="DPLOT phase-A bundle (default, for the same weights: the committed bundle, else "
                        "runs/prepare/<arch>_dplot.bundle, else phase A runs once and is cached under --cache)")
    p.add_argument("--no-ceiling", action="store_true",
                   help="skip the ceiling row (the all-weather oracle run without adaptation) and the gap-closed table")
    p.add_argument("--ceiling-weights", type=Path, default=None,
                   help="the ceiling's checkpoint (same architecture as --model, trained with labels on the target "
                        "domains); default: the committed oracle of an embedded model, if any")
    p.add_argument("--quality-source-every", type=int, default=0, metavar="N",
                   help="streaming seg: every N frames also estimate the source model's accuracy on the frame, so "
                        "each output's quality level flags an estimate below not adapting (the node's "
                        "quality_source_every; its cost is in the quality cost; default 0 = off)")
    p.add_argument("--safety", action="store_true",
                   help="engine safety on (collapse reset, NaN guard); off = paper protocol")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDR",
                   help="run the cells (seeds x sequences x methods) as Ray tasks, each pinned to --threads: "
                        "--ray alone starts a local Ray on this machine's cores, --ray ADDR joins a cluster "
                        "(auto, HOST:PORT, ray://HOST:PORT); the same numbers as without it (docs/fleet.md)")
    p.add_argument("--cache", type=Path, default=Path("runs/cache"), help="cache of rendered/corrupted data, bundles")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--domain-memory", action="store_true",
                   help="streaming: also run every method with domain memory ('<method>+dm': the node's "
                        "domain_memory), compared per weather cycle; the detector's purity")
    p.add_argument("--temporal-fusion", type=float, default=0.0, metavar="W",
                   help="streaming seg: also score every method with its outputs fused over time ('<method>+tf' "
                        "rows from the same run): class probabilities mixed with the previous fused map warped along "
                        "the optical flow, W the weight of the past (0 = off; docs/video.md). Flicker is reported "
                        "for every streaming run regardless")
    p.add_argument("--temporal-fusion-mode", default=None, choices=("fixed", "adaptive", "both"),
                   help="streaming seg, with --temporal-fusion: the fused rows scored: 'fixed' ('<method>+tf', W "
                        "everywhere; default), 'adaptive' ('<method>+tfa', W times the current frame's uncertainty "
                        "per pixel) or both, all from the same run (docs/video.md)")
    p.add_argument("--flow-preset", default="fast", choices=("ultrafast", "fast", "medium"),
                   help="streaming seg: OpenCV DIS preset of the optical flow (flicker metric, fusion, dplot-tpl)")
    p.add_argument("--cycles", type=int, default=None,
                   help="looping sequences (dynamic): this many weather cycles (dynamic's own length is 2)")
    p.add_argument("--cameras", type=int, default=None, metavar="N",
                   help="streaming: N cameras of one car (1..4: front, rear, narrow, wide; the same drive and "
                        "weather): one model adapted on all of them (shared, as tta_node cameras:=[...]) against "
                        "one model per camera (independent), per camera and on their mean, with the paired "
                        "interval of shared - independent over --seeds (bench/cameras.py); one --sequence "
                        "(default dynamic)")
    p.add_argument("--profile-step", action="store_true",
                   help="instead: each method's adaptation step (as the node builds it) against its floor, "
                        "the bare forward/backward passes it needs, with a torch.profiler breakdown "
                        "(bench/profile.py); --methods, --window, --threads apply, --model names an embedded "
                        "segmentation model (default driveseg; lite0_seg)")
    # long drives (docs/benchmark.md "Long drives")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="streaming: save each cell's state every N frames of its stream (<out>/checkpoints/), so "
                        "--resume continues an interrupted cell there (default: one weather cycle of a looping "
                        "sequence such as dynamic, else off; 0: off). Cells on --ray take no checkpoints (an "
                        "interrupted one runs again); finished cells are saved and resumed there too")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out: its finished cells (<out>/cells/) are loaded, the "
                        "unfinished ones continue from their checkpoints; refused if an option that changes the "
                        "numbers differs from the run's <out>/config.json")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds an unfinished run (deletes its cells/ and checkpoints/)")
    p.add_argument("--detach", action="store_true",
                   help="run in the background: the same command without --detach as a process of its own "
                        "(stdout and stderr appended to <out>/bench.log, its pid in <out>/bench.pid; one log line "
                        "per checkpoint interval instead of progress bars); prints how to follow and resume it")
    add_device(p)


# what each group of options applies to (the combinations refused without them: _check_combinations)
STREAM_OPTIONS = ("window", "adapt_every", "background", "predict", "bn_stats", "flow_preset", "domain_memory",
                  "realtime", "temporal_fusion", "temporal_fusion_mode", "cameras", "checkpoint_every",
                  "quality_source_every")
WORLD_SEG_OPTIONS = ("frames", "start", "stride", "size", "workers", "cycles")
PROFILE_OPTIONS = ("profile_step", "methods", "window", "threads", "model", "out")


def config_from_args(args: argparse.Namespace):
    from ..bench.suite import BenchConfig
    from ..bench.variants import QUICK_METHODS, VARIANTS, resolve_methods
    from .common import parse_size

    if args.dataset == "world":
        if args.task is None:
            raise ValueError("--task cls|seg is required for the embedded world")
        task = args.task
    else:
        task = "seg" if args.dataset == "carlatta" else "cls"
        if args.task is not None and args.task != task:
            raise ValueError(f"--dataset {args.dataset} is a {task} benchmark, not {args.task}")
        if args.model is None:
            raise ValueError("--model is required with a public dataset (e.g. wrn28_10 --weights PATH)")
    methods = resolve_methods(args.methods) if args.methods else \
        list(QUICK_METHODS if args.quick else resolve_methods("default"))
    fusion_mode = args.temporal_fusion_mode or "fixed"
    for flag, suffix in ((args.domain_memory, "+dm"), (args.temporal_fusion and fusion_mode != "adaptive", "+tf"),
                         (args.temporal_fusion and fusion_mode != "fixed", "+tfa")):
        if flag:
            methods += [m + suffix for m in list(methods)
                        if not VARIANTS[m].fused and m + suffix in VARIANTS and m + suffix not in methods]
    if args.cameras is not None and not 1 <= args.cameras <= 4:
        raise ValueError(f"--cameras must be 1..4 (front, rear, narrow, wide), got {args.cameras}")
    if args.temporal_fusion and not 0 < args.temporal_fusion < 1:
        raise ValueError("--temporal-fusion W needs 0 < W < 1")
    if args.cycles is not None and args.cycles < 1:
        raise ValueError("--cycles must be >= 1")
    if args.quality_source_every < 0:
        raise ValueError(f"--quality-source-every must be a number of frames >= 0 (0: off), got {args.quality_source_every}")
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be a number of frames >= 0 (0: off), got {args.checkpoint_every}")
    preset: dict = {}
    if args.paper_scale:
        from ..bench.suite import PAPER_SCALE

        preset = dict(PAPER_SCALE)
    seeds_arg = args.seeds if args.seeds is not None else ",".join(map(str, preset.get("seeds", [0])))
    try:
        seeds = [int(s) for s in seeds_arg.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be a comma list of integers, got {seeds_arg!r}") from None
    if not seeds:
        raise ValueError("--seeds is empty")
    seeds_for = [t.strip() for t in args.seeds_for.split(",") if t.strip()] if args.seeds_for else \
        preset.get("seeds_for")
    for t in seeds_for or []:
        if not (t in methods or (t.startswith("best") and (t[4:] == "" or t[4:].isdigit()))):
            raise ValueError(f"--seeds-for: {t!r} is neither one of --methods nor bestK")
    seqs = [s.strip() for s in args.sequence.split(",") if s.strip()] if args.sequence else []
    corr = [c.strip() for c in args.corruptions.split(",") if c.strip()] if args.corruptions else None
    if args.realtime is not None and not args.realtime > 0:
        raise ValueError(f"--realtime must be a camera rate > 0 Hz, got {args.realtime}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds lists a seed twice: {seeds_arg}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    batch_size = args.batch_size if args.batch_size is not None else preset.get("batch_size")
    n = args.n if args.n is not None else preset.get("n")
    if args.ray not in (None, "local"):
        from ..fleet.cluster import check_address

        check_address(args.ray)
    cfg = BenchConfig(
        task=task, methods=methods, setting=args.setting, dataset=args.dataset,
        data_root=str(args.data_root) if args.data_root else None,
        source_root=str(args.source_root) if args.source_root else None, sequences=seqs, model=args.model,
        weights=str(args.weights) if args.weights else None, random_init=args.random_init,
        allow_code_architecture=args.allow_code_architecture,
        batch_size=batch_size, severity=args.severity, corruptions=corr, n=n, start=args.start,
        frames=args.frames, stride=args.stride, size=parse_size(args.size), streaming=args.stream,
        window=args.window, adapt_every=args.adapt_every, background=args.background, predict=args.predict,
        bn_stats=args.bn_stats,
        quick=args.quick,
        seeds=seeds, seeds_for=seeds_for, shuffle=args.shuffle or preset.get("shuffle", False),
        prepare_profile=preset.get("prepare_profile"), paper_scale=args.paper_scale,
        cycles=args.cycles, cameras=args.cameras, realtime=args.realtime, temporal_fusion=float(args.temporal_fusion),
        flow_preset=args.flow_preset,
        realtime_costs=str(args.realtime_costs) if args.realtime_costs else None,
        bundle=str(args.bundle) if args.bundle else None, safety=args.safety, device=args.device,
        quality_source_every=args.quality_source_every,
        out=str(args.out) if args.out else None, cache=str(args.cache), workers=args.workers, ray=args.ray,
        progress=not args.no_progress, plot=not args.no_plot, ceiling=not args.no_ceiling,
        ceiling_weights=str(args.ceiling_weights) if args.ceiling_weights else None,
        checkpoint_every=args.checkpoint_every, resume=args.resume, overwrite=args.overwrite)
    _check_combinations(args, cfg)
    return cfg


def _check_combinations(args: argparse.Namespace, cfg=None) -> None:
    """Every combination bench refuses, in one line each: an option that would do nothing in this
    combination (or a row that would equal its base row) is refused rather than silently ignored.
    ``cfg`` None: ``--profile-step``, which takes a few options only."""
    from ..bench.streams import SEG_SEQUENCES
    from ..bench.variants import VARIANTS, needs_bundle
    from ..world.schedule import load_schedule
    from .common import option_defaults, refuse_unused

    if cfg is None:
        others = [d for d in option_defaults(add_arguments) if d not in PROFILE_OPTIONS]
        refuse_unused(args, add_arguments, [(True, others, "not used by --profile-step (it takes --methods, "
                                                           "--window, --threads, --model, --out)")])
        return
    task, world_seg = cfg.task, cfg.task == "seg" and cfg.dataset == "world"
    if args.paper_scale and (task != "cls" or args.dataset != "world" or args.stream or args.quick):
        raise ValueError("--paper-scale is the classification preset: --task cls on the embedded world, "
                         "without --stream or --quick")
    if args.stream and task != "seg":
        raise ValueError("--stream is the segmentation streaming protocol (--task seg)")
    data = f"--dataset {args.dataset}" if args.dataset != "world" else f"--task {task}"
    seqs = cfg.sequences or SEG_SEQUENCES
    refuse_unused(args, add_arguments, [
        (not args.stream, STREAM_OPTIONS, "the streaming protocol's: add --stream"),
        (args.stream, ["batch_size"], "the batch protocol's: --stream feeds one frame at a time"),
        (not world_seg, WORLD_SEG_OPTIONS, f"frames of the embedded world's driving sequences, not of {data}"),
        (world_seg, ["n", "severity", "corruptions"], "classification (--task cls) or a public --dataset only"),
        (task != "cls" or args.dataset != "world", ["shuffle"], "the embedded world's classification order "
                                                                "(--task cls)"),
        (args.dataset == "world", ["data_root", "source_root"], "a public --dataset only"),
        (args.setting == "gradual", ["severity"], "--setting gradual sweeps the severities itself"),
        (args.cameras is not None, ["cycles", "seeds_for", "flow_preset", "temporal_fusion", "temporal_fusion_mode",
                                    "realtime", "quality_source_every"],
         "not part of --cameras (every method runs every seed over --frames; no video rows, no simulated clock)"),
        (args.realtime is not None, ["temporal_fusion", "temporal_fusion_mode"],
         "not combined with --realtime (its simulated clock does not carry the fused rows); run them separately"),
        (not args.temporal_fusion, ["temporal_fusion_mode"], "the mode of the fused rows: needs --temporal-fusion W"),
        (args.realtime is None, ["realtime_costs"], "needs --realtime HZ"),
        (args.cameras is not None, ["ray"], "not part of --cameras (its shared and independent runs stay in this "
                                            "process)"),
        (args.cameras is not None, ["resume", "overwrite", "detach"],
         "not part of --cameras (its shared and independent runs are not saved cell by cell)"),
        (args.resume, ["overwrite"], "starts the run in --out over, --resume continues it: give one of them"),
        (args.out is None, ["resume", "detach"], "needs --out DIR (the folder of the run: its cells, checkpoints, "
                                                 "log and pid)"),
        (args.frames is not None, ["cycles"], "ends the sequence as --frames does: give one of them"),
        (world_seg and args.cycles is not None and not any(load_schedule(s).loop for s in seqs), ["cycles"],
         "whole weather cycles of a looping sequence (dynamic): none of --sequence loops"),
        (len(cfg.seeds) == 1, ["seeds_for"], "picks the methods that run the seeds after the first: give "
                                             "several --seeds"),
        (args.no_ceiling, ["ceiling_weights"], "the ceiling's checkpoint, not used with --no-ceiling"),
        (args.weights is not None, ["random_init"], "--weights loads a checkpoint: give one of them"),
        (not needs_bundle(cfg.methods), ["bundle"], "phase A of DPLOT / RMT and their variants: none of "
                                                    "--methods loads it"),
    ])
    if any(VARIANTS[m].fused for m in cfg.methods) and not args.temporal_fusion:
        raise ValueError("'<method>+tf' / '<method>+tfa' rows need --temporal-fusion W")
    video = [m for m in cfg.methods if VARIANTS[m].video and not VARIANTS[m].fused]
    video = (["--temporal-fusion"] if args.temporal_fusion else []) + video
    streaming = [m for m in cfg.methods if VARIANTS[m].domain_memory or VARIANTS[m].video]
    if streaming and not args.stream:
        raise ValueError(f"{', '.join(streaming)}: streaming variants, add --stream")
    if video and args.cameras is not None:
        raise ValueError(f"{', '.join(video)}: not part of --cameras (its shared model sees no optical flow)")
    if video and world_seg:
        _check_consecutive(cfg, ", ".join(video))


def _check_consecutive(cfg, what: str) -> None:
    """The video rows follow the optical flow between consecutive frames, which breaks where two
    frames are further apart than ``FlowChain`` links: refused rather than rows equal to their base."""
    from ..bench.streams import SEG_SEQUENCES
    from ..bench.suite import QUICK_SEG_FRAMES, seg_range
    from ..engine.temporal import MAX_GAP_S
    from ..world.schedule import load_schedule

    if cfg.setting == "mixed":
        raise ValueError(f"{what}: follows the optical flow between consecutive frames, and --setting mixed "
                         "shuffles them")
    for name in cfg.sequences or SEG_SEQUENCES:
        sched = load_schedule(name)
        stride = seg_range(cfg, sched)[1]
        if stride / sched.fps <= MAX_GAP_S:
            continue
        why = (f"--quick spreads {QUICK_SEG_FRAMES} frames over {name}," if cfg.stride is None else
               f"--stride {stride} on {name} puts them")
        raise ValueError(f"{what}: follows the optical flow between consecutive frames, but {why} "
                         f"{stride / sched.fps:g} s apart (the flow links frames up to {MAX_GAP_S:g} s apart: "
                         f"--stride {int(MAX_GAP_S * sched.fps)} or less)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench.suite import run_suite

    cfg = None if args.profile_step else config_from_args(args)  # refusals first, before any work
    if cfg is None:
        _check_combinations(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cfg is None:
        from ..bench.profile import METHODS, run_profile

        methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
        run_profile(methods, out=args.out or "runs/bench/profile_step", threads=args.threads, window=args.window,
                    model=args.model or "driveseg")
        return 0
    if args.detach:
        return detach(args, cfg)
    if cfg.cameras:
        from ..bench.cameras import run_cameras

        run_cameras(cfg)
        return 0
    run_suite(cfg)
    return 0


def detach(args: argparse.Namespace, cfg) -> int:
    """``--detach``: the same command line without it, as a process of its own session (no shell),
    stdin from /dev/null, stdout and stderr appended to ``<out>/bench.log``, its pid in
    ``<out>/bench.pid``; the refusals about ``--out`` are made here first, so they reach the user."""
    import os
    import shlex
    import subprocess
    import sys
    import time
    from dataclasses import asdict

    import torch

    from ..atomic import atomic_write_text
    from ..bench.resume import LOG_FILE, PID_FILE, check_out

    out = Path(cfg.out)
    check_out(out, asdict(cfg), torch.get_num_threads(), resume=cfg.resume, overwrite=cfg.overwrite)
    argv = [a for a in getattr(args, "_argv", sys.argv[1:]) if not (len(a) > 4 and "--detach".startswith(a))]
    child = argv + ([] if "--no-progress" in argv else ["--no-progress"])  # a log: lines, not bars
    out.mkdir(parents=True, exist_ok=True)
    log_path, pid_path = out / LOG_FILE, out / PID_FILE
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} tta-perception {shlex.join(child)}\n".encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "tta_perception.cli.main", *child], stdin=devnull,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                shell=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    atomic_write_text(pid_path, f"{proc.pid}\n")
    again = [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
    print(f"bench runs in the background: pid {proc.pid} (in {pid_path})\n"
          f"  log:      {log_path}\n"
          f"  follow:   tail -f {shlex.quote(str(log_path))}\n"
          f"  stop:     kill {proc.pid}\n"
          f"  continue after an interruption: tta-perception {shlex.join(again)} --detach", flush=True)
    return 0
