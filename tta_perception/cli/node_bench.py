"""node-bench: end-to-end latency, drops, memory and online mIoU of tta_node over DDS (separate process)."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("end-to-end benchmark of tta_node over DDS: publish the dynamic sequence at 10 Hz, node in its own "
        "process; publish->output latency, processed/dropped, online mIoU, RSS, node overhead")


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 128x256; got {text!r}") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError("size must be at least 8x8")
    return h, w


def _param(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--node-param takes NAME=VALUE; got {text!r}")
    k, v = text.split("=", 1)
    for cast in (int, float):
        try:
            return k, cast(v)
        except ValueError:
            pass
    return k, {"true": True, "false": False}.get(v.lower(), v)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", action="append", default=None,
                   help="method(s) to run one after the other in this command (repeat or comma-separate); "
                        "NAME+dm: NAME with domain_memory on; NAME+tf: NAME with temporal_fusion 0.6; default: source,dplot")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=float, default=None, help="seconds of publishing per method (default 120)")
    g.add_argument("--frames", type=int, default=None, help="frames published per method")
    g.add_argument("--cycles", type=int, default=None,
                   help="instead: this many whole weather cycles of a looping schedule (dynamic: 1,200 "
                        "frames per cycle at --stride 1), every frame rendered; mIoU per phase and cycle")
    p.add_argument("--cameras", type=int, default=None, metavar="N",
                   help="instead: N cameras of one car (1..4: front, rear, narrow, wide) at --rate each: one "
                        "shared node (cameras:=[...]) against N single-camera nodes at once and the first "
                        "camera's node alone, on the same frames; total CPU seconds per frame, p50/p95 per "
                        "camera, drops, adaptation steps/s, RSS, online mIoU per camera (one --method; default "
                        "dplot; --duration default 60)")
    p.add_argument("--restart-between-cycles", action="store_true",
                   help="with --cycles: between two cycles the node saves (~/save), is killed with SIGKILL "
                        "and restarts with resume_from (does what it learned survive a crash?)")
    p.add_argument("--seed", type=int, default=0,
                   help="benchmark seed: the world the frames are rendered in (schedule seed + seed, as "
                        "bench --seeds); the node's timing is not seeded")
    p.add_argument("--rate", type=float, default=10.0, help="publish rate (Hz)")
    p.add_argument("--size", type=_size, default=(128, 256), help="image size HxW")
    p.add_argument("--encoding", default="bgra8", choices=("bgra8", "rgb8"), help="image encoding sent")
    p.add_argument("--schedule", default="dynamic", help="weather sequence")
    p.add_argument("--stride", type=int, default=2, help="schedule frames per published frame")
    p.add_argument("--unique-frames", type=int, default=1200,
                   help="frames rendered up front; longer runs loop over them (1200 x stride 2 = the "
                        "whole dynamic cycle)")
    p.add_argument("--publisher-qos", default="reliable", choices=("reliable", "best_effort"),
                   help="reliability of the benchmark's camera publisher (the node's own qos_reliability is a "
                        "--node-param; by default it follows the publisher)")
    p.add_argument("--dds-profile", default="default",
                   help="DDS profile for large frames in this process (the publisher) and the node's: default "
                        "(the one shipped for the RMW in use), none, or the path of your own")
    p.add_argument("--device", default="cpu", help="device of the node")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch intra-op threads of the node (OMP_NUM_THREADS) and of the overhead "
                        "measurement; 0: torch's default (one per core)")
    p.add_argument("--node-param", type=_param, action="append", default=[],
                   help="extra tta_node parameter NAME=VALUE (repeatable)")
    p.add_argument("--window", type=float, default=60.0,
                   help="seconds of the first/last window compared for latency growth")
    g2 = p.add_mutually_exclusive_group()
    g2.add_argument("--no-overhead", action="store_true", help="skip the in-process overhead measurement")
    g2.add_argument("--overhead-only", action="store_true",
                    help="only the in-process overhead measurement (no node process, no DDS run)")
    g2.add_argument("--memory", action="store_true",
                    help="instead: the node's RSS under the extreme parameter values it accepts (every method's "
                         "largest input size and window, the largest frame), refusals, RSS after a return to "
                         "the default (bench/memory.py); --method limits the methods")
    g2.add_argument("--storm", action="store_true",
                    help="instead: flood the node from one DDS peer while frames flow: --storm-calls concurrent "
                         "service calls (~/save, ~/reset, ~/enable), then --storm-params set_parameters calls "
                         "over --storm-seconds (every other one changing 'method'); answers, reply latency, "
                         "frames answered meanwhile, time to settle on the last method (--method: the "
                         "node's method at start, default tent)")
    p.add_argument("--storm-calls", type=int, default=1000, help="--storm: concurrent service calls")
    p.add_argument("--storm-params", type=int, default=1000, help="--storm: set_parameters calls")
    p.add_argument("--storm-seconds", type=float, default=20.0, help="--storm: seconds the parameter calls span")
    p.add_argument("--overhead-repeats", type=int, default=60, help="frames timed for the overhead")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the node")
    p.add_argument("--no-plot", action="store_true", help="no PNG")
    p.add_argument("--out", type=Path, default=Path("runs/node_bench"),
                   help="output folder (node_bench .txt/.md/.json/.csv + .png)")


# the options each "instead" mode uses (any other set is refused: _check_combinations); the default
# run uses every option but the --storm ones
MODES = {
    "memory": {"memory", "dds_profile", "method", "device", "torch_threads", "out"},
    "storm": {"storm", "dds_profile", "method", "device", "node_param", "storm_calls", "storm_params",
              "storm_seconds", "rate", "size", "startup_timeout", "torch_threads", "out"},
    "cameras": {"cameras", "dds_profile", "method", "duration", "frames", "seed", "rate", "size", "encoding",
                "schedule", "stride", "device", "torch_threads", "node_param", "startup_timeout", "no_plot", "out"},
    "overhead_only": {"overhead_only", "dds_profile", "size", "encoding", "schedule", "seed", "torch_threads",
                      "overhead_repeats", "out"},
}
STORM_OPTIONS = ("storm_calls", "storm_params", "storm_seconds")


def _check_combinations(args: argparse.Namespace) -> None:
    """Options the chosen mode would not use are refused in one line, not ignored (the modes run
    in the order of ``run``: --memory, --storm, --cameras, --overhead-only, the default run)."""
    from .common import option_defaults, refuse_unused

    mode = next((m for m in MODES if getattr(args, m) not in (None, False)), None)
    flag = f"--{mode.replace('_', '-')}" if mode else ""
    methods = [m for item in (args.method or []) for m in item.split(",") if m.strip()]
    refuse_unused(args, add_arguments, [
        (mode is not None, [d for d in option_defaults(add_arguments) if d not in MODES.get(mode, ())],
         f"not used by {flag}"),
        (mode is None, STORM_OPTIONS, "options of --storm: add --storm"),
        (args.no_overhead, ["overhead_repeats"], "not used with --no-overhead"),
        (args.cycles is None, ["restart_between_cycles"], "needs --cycles"),
    ])
    if mode == "storm" and len(methods) > 1:
        raise ValueError(f"--storm starts the node with one --method, got {', '.join(methods)}")


def run(args: argparse.Namespace) -> int:
    from ..ros.weather_loop import available

    _check_combinations(args)

    ok, why = available()
    if not ok:
        raise ValueError(f"rclpy is not importable: {why}")
    from ..ros.dds_profile import apply

    print(f"[node-bench] {apply(args.dds_profile)}")  # before any participant; the node process inherits it
    from ..bench.node import run_node_bench
    from ..ros import node_bench as client

    if args.memory:
        from ..bench.memory import METHODS, run_memory_bench

        chosen = [m.strip() for item in (args.method or []) for m in item.split(",") if m.strip()]
        out = args.out if args.out != Path("runs/node_bench") else Path("runs/node_bench_memory")
        report = run_memory_bench(out=out, methods=chosen or METHODS, device=args.device,
                                  torch_threads=args.torch_threads, client=client)
        print("wrote " + ", ".join(report["files"].values()))
        return 0
    if args.storm:
        return _storm(args, client)
    if args.cameras is not None:
        return _cameras(args, client)
    methods = [m.strip() for item in (args.method or ["source,dplot"]) for m in item.split(",") if m.strip()]
    if args.overhead_only:
        methods = []
    duration = args.duration if args.duration is not None else (None if args.frames or args.cycles else 120.0)
    report = run_node_bench(methods, duration=duration, frames=args.frames, rate=args.rate, size=args.size,
                            out=args.out, schedule=args.schedule, stride=args.stride,
                            unique_frames=args.unique_frames, encoding=args.encoding, device=args.device,
                            node_params=dict(args.node_param), window_s=args.window,
                            overhead=not args.no_overhead, overhead_repeats=args.overhead_repeats,
                            startup_timeout=args.startup_timeout, plot=not args.no_plot,
                            torch_threads=args.torch_threads, cycles=args.cycles,
                            restart_between_cycles=args.restart_between_cycles, seed=args.seed,
                            publisher_qos=args.publisher_qos, dds_profile=args.dds_profile, client=client)
    print("wrote " + ", ".join(report["files"].values()))
    return 0


def _cameras(args: argparse.Namespace, client) -> int:
    """``--cameras N``: ``bench.node.run_camera_bench``."""
    from ..bench.node import run_camera_bench

    methods = [m.strip() for item in (args.method or ["dplot"]) for m in item.split(",") if m.strip()]
    if len(methods) != 1:
        raise ValueError(f"--cameras runs one --method, got {methods}")
    if not 1 <= args.cameras <= 4:
        raise ValueError(f"--cameras must be 1..4 (front, rear, narrow, wide), got {args.cameras}")
    if args.cycles is not None:
        raise ValueError("--cameras runs --duration or --frames, not --cycles")
    duration = args.duration if args.duration is not None else (None if args.frames else 60.0)
    out = args.out if args.out != Path("runs/node_bench") else Path("runs/node_bench_cameras")
    report = run_camera_bench(methods[0], args.cameras, duration=duration, frames=args.frames, rate=args.rate,
                              size=args.size, out=out, schedule=args.schedule, stride=args.stride,
                              encoding=args.encoding, device=args.device, node_params=dict(args.node_param),
                              startup_timeout=args.startup_timeout, plot=not args.no_plot,
                              torch_threads=args.torch_threads, seed=args.seed, client=client)
    print("wrote " + ", ".join(report["files"].values()))
    return 0


def _storm(args: argparse.Namespace, client) -> int:
    """``--storm``: run ``ros.storm`` against one node process, print the figures, write JSON."""
    import json

    from ..atomic import atomic_write_text
    from ..bench.node import private_domain_id
    from ..ros.storm import run_storm

    method = next((m.strip() for item in (args.method or ["tent"]) for m in item.split(",") if m.strip()), "tent")
    params = {"method": method, "device": args.device, **dict(args.node_param)}
    report = run_storm(node_params=params, domain_id=private_domain_id(),
                       log=print, n_calls=args.storm_calls, n_params=args.storm_params,
                       param_seconds=args.storm_seconds, rate=args.rate, size=args.size,
                       startup_timeout=args.startup_timeout, torch_threads=args.torch_threads)
    s, p = report["services"], report["parameters"]
    print(f"services:   {s['answered']}/{s['sent']} answered, last answer {s['last_answer_s']:.2f} s after the "
          f"first call; successful {s['successful']}; {s['saves']} saves written ({s['saves_shared']} shared); "
          f"{s['frames_answered']} frames answered meanwhile")
    print(f"parameters: {p['answered']}/{p['sent']} answered, reply p50 {p['reply_p50_ms']:.1f} ms, p95 "
          f"{p['reply_p95_ms']:.1f} ms, max {p['reply_max_ms']:.0f} ms ({p['late_over_1s']} over 1 s); "
          f"settled on {p['last_method']!r} {p['settle_s']:.2f} s after the last call; {p['reloads']} reloads "
          f"built, {p['reloads_coalesced']} coalesced, {p['reload_failures']} failed; {p['frames_answered']} of "
          f"~{p['frames_sent']} frames answered during the storm")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "storm.json"
    atomic_write_text(path, json.dumps(report, indent=2, default=str))
    print(f"wrote {path}")
    return 0 if report.get("node_alive") else 1
