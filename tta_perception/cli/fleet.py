"""fleet: replay many bags through one configuration, each bag from the source state in its own
task (Ray: a cluster, or a local one; without Ray one after another here), then one summary per
bag, per weather tag and overall, and with several methods their paired comparison across bags."""
from __future__ import annotations

import argparse
from pathlib import Path

from .replay import add_settings, settings

HELP = ("replay many bags (folders, globs, lists) on Ray, each from the source state; summary per bag, "
        "per weather tag and overall, methods compared across bags")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bags", nargs="+",
                   help="bag folders, folders holding bags (searched below), glob patterns (quoted) or text files "
                        "listing one of these per line (# comments; relative to the file)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: records/, bags/, summary.txt|json|csv, tags.csv, paired.csv, PNGs")
    add_settings(p)
    p.add_argument("--methods", default=None,
                   help="several methods, comma-separated: one run per method on every bag, compared in pairs "
                        "with the first (default: --method)")
    p.add_argument("--no-output-bags", action="store_true",
                   help="score only: each replayed bag is removed once scored")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join a running Ray cluster: auto, HOST:PORT (ray start --head) or ray://HOST:PORT "
                        "(default: a local Ray on this machine's cores; without Ray installed, one bag after "
                        "another in this process)")
    p.add_argument("--workers", type=int, default=None,
                   help="at most N bags at once (default: as many as the cluster's CPUs hold)")
    p.add_argument("--cpus-per-bag", type=int, default=1,
                   help="CPUs each task asks for, and its torch threads (a replay with the same thread count "
                        "gives the same bits)")
    p.add_argument("--gpus-per-bag", type=float, default=None,
                   help="GPU share of each task, fractions allowed (0.5: two bags per GPU); default 1 with "
                        "--device cuda, else 0")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted fleet run into --out: finished bags are kept, bags in flight "
                        "continue from their checkpoints (same options)")
    p.add_argument("--overwrite", action="store_true", help="start again in an --out that holds a fleet run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..fleet.cluster import ClusterSettings, check_address, check_shares
    from ..fleet.run import FleetConfig, run_fleet
    from ..fleet.summary import format_summary
    from ..runtime.params import node_config

    cfg, fields = settings(args)
    if args.methods and args.method:
        raise ValueError("give --method or --methods, not both")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else [cfg["method"]]
    for m in methods:
        node_config({"method": m})  # an unknown method: one line, before any work
    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be >= 1")
    device = str(cfg.get("device") or "")
    gpus = args.gpus_per_bag if args.gpus_per_bag is not None else (1.0 if device.startswith("cuda") else 0.0)
    if gpus > 0 and not device.startswith("cuda"):
        raise ValueError("--gpus-per-bag needs --device cuda (or cuda:N): the bags would not use the GPU")
    check_shares(args.cpus_per_bag, gpus)
    if args.ray_address:
        check_address(args.ray_address)
    fleet = FleetConfig(bags=list(args.bags), out=str(args.out), cfg=cfg, methods=methods, replay=fields,
                        keep_output=not args.no_output_bags, resume=args.resume, overwrite=args.overwrite,
                        cluster=ClusterSettings(address=args.ray_address, workers=args.workers,
                                                cpus=args.cpus_per_bag, gpus=gpus),
                        progress=not args.no_progress, plot=not args.no_plot)
    try:
        summary = run_fleet(fleet)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the finished bags' records are in {args.out}/records; run the same command with "
              "--resume to finish the rest")
        return 130
    print("\n" + format_summary(summary))
    print(f"\nwrote {summary['out']}/ ({', '.join(sorted(Path(f).name for f in summary['files'].values()))}, "
          "records/" + (", bags/" if fleet.keep_output else "") + ")")
    failed = len(summary["failed"])
    return 1 if failed and failed == len(summary["rows"]) else 0
