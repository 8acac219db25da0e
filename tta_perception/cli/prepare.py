"""prepare: DPLOT phase A (domain-specific block selection + mean-teacher warm-up) -> bundle."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_code_architecture, add_device

HELP = "DPLOT phase A on source data: block selection + mean-teacher warm-up, writes the bundle"

DATASETS = ("world", "cifar10_c", "cifar100_c", "imagenet_c", "carlatta", "folder")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("cls", "seg"), default=None,
                   help="the embedded world's source data (cls: sign crops, seg: driving frames) for the model "
                        "--model names (default signnet / driveseg); implied by --dataset for public data")
    p.add_argument("--model", default=None, help="architecture (default: signnet / driveseg)")
    p.add_argument("--weights", type=Path, default=None, help="checkpoint (default: the committed source model)")
    p.add_argument("--random-init", action="store_true", help="untrained model (smoke tests only)")
    add_code_architecture(p)
    p.add_argument("--dataset", default="world", choices=DATASETS,
                   help="source data: the embedded world's clear renders, or a public dataset's source loader")
    p.add_argument("--data-root", type=Path, default=None, help="root of the public dataset")
    p.add_argument("--out", type=Path, default=None, help="bundle path (default: runs/prepare/<arch>_dplot.bundle)")
    p.add_argument("--samples", type=int, default=None,
                   help="source samples for block selection + prototypes (default: cls 2048, seg 128; official 50000)")
    p.add_argument("--batch-size", type=int, default=None, help="source batch size (default: cls 64, seg 8; official 128)")
    p.add_argument("--selection-steps", type=int, default=None,
                   help="entropy steps per candidate block (default: one epoch over --samples, as official)")
    p.add_argument("--warmup-samples", type=int, default=None,
                   help="mean-teacher warm-up samples (default: cls 4096, seg 256; official 50000)")
    p.add_argument("--official", action="store_true",
                   help="the official amounts (hours on CPU; the default for a public --dataset)")
    p.add_argument("--quick", action="store_true",
                   help="tiny amounts for a smoke run: seconds on the embedded models; minutes on an "
                        "ImageNet-size network (every candidate block is scored: EfficientNet-Lite0's 16 "
                        "blocks at 224x224 took ~8 minutes on a 2-core CPU)")
    p.add_argument("--threshold", type=float, default=0.75, help="selection threshold on min-max scaled scores")
    p.add_argument("--noise-std", type=float, default=0.5, help="Gaussian noise std added to source images")
    p.add_argument("--clip", action="store_true", help="clip noisy images to [0, 1] (official: no)")
    p.add_argument("--size", default=None,
                   help="seg world: source render size HEIGHTxWIDTH (default 128x256); --dataset folder/imagenet_c: "
                        "the square crop SxS the images are resized to (default: the model's input_size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--cache", type=Path, default=Path("runs/cache"), help="cache folder for rendered source data")
    p.add_argument("--no-progress", action="store_true")
    add_device(p)


def task_of(args) -> str:
    if args.dataset == "world":
        if args.task is None:
            raise ValueError("--task cls|seg is required for the embedded world")
        return args.task
    task = "seg" if args.dataset == "carlatta" else "cls"
    if args.task is not None and args.task != task:
        raise ValueError(f"--dataset {args.dataset} is a {task} dataset, not {args.task}")
    return task


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from ..bench.common import model_spec
    from ..runtime.model_loader import load_model
    from ..bench.prepare import PrepareSettings, default_bundle_path, run_prepare, score_table
    from ..engine.bundle import save_bundle
    from .common import device_of

    if args.official and args.quick:
        raise ValueError("--official and --quick exclude each other")
    if args.threads:
        torch.set_num_threads(args.threads)
    task = task_of(args)
    device = device_of(args)
    num_classes = None
    if args.dataset != "world":
        if args.data_root is None:
            raise ValueError("--data-root is required with --dataset")
        if args.model is None:
            raise ValueError("--model is required with a public dataset")
        num_classes = {"cifar10_c": 10, "cifar100_c": 100, "carlatta": 14}.get(args.dataset)
    lm = load_model(**model_spec(task, args.model, args.weights, args.random_init, args.allow_code_architecture), task=task,
                    num_classes=num_classes, seed=args.seed, device=device, label="--model",
                    architecture_label="--model")
    # public data: a reproduction (normally on a GPU) gets the official amounts by default
    profile = "official" if args.official or (args.dataset != "world" and not args.quick) else \
        "quick" if args.quick else "default"
    s = PrepareSettings.for_task(task, profile, samples=args.samples, batch_size=args.batch_size,
                                 warmup_samples=args.warmup_samples, selection_steps=args.selection_steps,
                                 threshold=args.threshold, noise_std=args.noise_std, clip=args.clip, seed=args.seed,
                                 source=args.dataset, data_root=str(args.data_root) if args.data_root else None,
                                 size=_source_size(args, lm.model))
    if args.dataset == "folder":  # a user's own folder: never more samples than it holds
        from ..datasets.source import source_domain

        held = len(source_domain("folder", args.data_root, image_size=s.size[0])[0])
        if s.samples > held:
            print(f"the folder holds {held} images: phase A uses all of them (not {s.samples})")
            s.samples = held
    print(f"DPLOT phase A for {lm.arch} ({lm.weights_desc}) on {device}")
    if s.source != "world":
        print(f"source data: {s.samples} samples of {s.source} at {s.data_root}"
              + (" (--official amounts: set --samples for fewer)" if s.profile.startswith("official") else ""))
    res = run_prepare(lm.model, s, arch=lm.arch, weights_id=lm.weights_id, weights_desc=lm.weights_desc,
                      cache_dir=args.cache, progress=not args.no_progress)
    b = res.bundle
    print("\nper-block scores (mean cosine of class prototypes before/after entropy-minimising the block):")
    print(score_table(b))
    print(f"selected blocks (scaled score > {s.threshold:g}): {', '.join(b.selected_blocks) or 'none'}")
    wu = b.metadata.get("warmup", {})
    print(f"warm-up: {wu.get('steps')} steps on {wu.get('samples')} samples, final SCE {wu.get('final_loss')}")
    devs = b.metadata.get("deviations", [])
    if devs:
        print("deviations from the official phase A:")
        for d in devs:
            print(f"  - {d}")
    out = args.out or default_bundle_path(lm.arch)
    save_bundle(b, out)
    print(f"wrote {out} ({Path(out).stat().st_size / 1e6:.2f} MB) in {res.seconds:.0f} s "
          f"[{time.strftime('%H:%M:%S')}]")
    _record_committed(args, Path(out), b.selected_blocks)
    return 0


def _record_committed(args, out: Path, selected) -> None:
    """A bundle written into the package's weights folder for a committed model (no --weights) is
    recorded in the manifest beside that model, so the node and ``bench`` find it by the model's
    name (how the committed bundles were made)."""
    import json
    import shlex
    import sys

    from ..atomic import atomic_write_text
    from ..models.checkpoint import MANIFEST, read_manifest, sha256_of
    from ..paths import WEIGHTS_DIR

    manifest = read_manifest()
    if args.weights is not None or args.random_init or args.dataset != "world" or args.model not in manifest \
            or out.resolve().parent != WEIGHTS_DIR.resolve():
        return
    manifest[args.model]["dplot_bundle"] = {
        "file": out.name, "sha256": sha256_of(out), "selected_blocks": list(selected),
        "command": "tta-perception " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    atomic_write_text(MANIFEST, json.dumps(manifest, indent=2) + "\n")
    print(f"recorded in {MANIFEST} as {args.model}'s bundle")


def _source_size(args, model) -> tuple[int, int]:
    """--size, else: the world's render size (seg), or the model's own square input for image
    folders (Lite0: 224), which have no size of their own."""
    from .common import parse_size

    if args.size:
        size = parse_size(args.size)
    elif args.dataset in ("folder", "imagenet_c"):
        own = tuple(getattr(model, "input_size", None) or (224, 224))
        size = (int(own[0]), int(own[1]))
    else:
        size = (128, 256)
    if args.dataset in ("folder", "imagenet_c") and size[0] != size[1]:
        raise ValueError(f"--size for --dataset {args.dataset} is a square crop SxS, got {size[0]}x{size[1]}")
    return size
