"""check-model: every rule of the model contract, checked on a network before any long run (the
loader refuses a model at its first failed rule; this prints them all)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_code_architecture, parse_size

HELP = ("check a network against the model contract (attributes, candidate blocks, output shapes of one "
        "small forward): each rule pass/fail, non-zero exit on a failure")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a registered architecture (models.list_models(), entry points included; its builder's "
                        "weights unless --weights), an embedded model, or a checkpoint that records its "
                        "architecture (the node's 'model')")
    p.add_argument("--weights", type=Path, default=None,
                   help="checkpoint to load into the architecture (--architecture, else --model)")
    p.add_argument("--architecture", default="",
                   help="the node's 'architecture': the registered name --model's checkpoint is loaded into")
    p.add_argument("--task", choices=("seg", "cls"), default=None, help="also require this task")
    p.add_argument("--size", type=parse_size, default=None,
                   help="probe input HEIGHTxWIDTH (default: the model's input_size, for segmentation halved "
                        "down to 64x128; else seg 64x128, cls 32x32)")
    add_code_architecture(p)


def model_spec(args: argparse.Namespace) -> dict:
    """``load_model`` arguments: ``--weights`` into the architecture; a name that is a registered
    architecture but no embedded model, built by its builder; else the node's model/architecture."""
    from ..runtime.model_loader import embedded_models, looks_like_path

    model, arch = args.model.strip(), args.architecture.strip()
    code = {"allow_import": bool(args.allow_code_architecture)}
    if args.weights is not None:
        return {"model": str(args.weights), "architecture": arch or model, **code}
    if arch or looks_like_path(model) or model in embedded_models():
        return {"model": model, "architecture": arch, **code}
    return {"architecture": model, **code}


def run(args: argparse.Namespace) -> int:
    from ..models.base import contract_rules, probe_size
    from ..runtime.model_loader import load_model

    lm = load_model(**model_spec(args), label="--model", architecture_label="--architecture" if
                    args.architecture.strip() else "--model", task=args.task, check=False)
    net = lm.model
    params = sum(p.numel() for p in net.parameters()) / 1e6
    rules = contract_rules(net, size=args.size)
    size = args.size or (probe_size(net) if getattr(net, "task", None) in ("seg", "cls") else None)
    print(f"{lm.arch} ({lm.weights_desc}): {params:.2f} M parameters, task {getattr(net, 'task', '?')!r}"
          + (f", probe input 1x3x{size[0]}x{size[1]}" if size else ""))
    for r in rules:
        print(f"  {'pass' if r.ok else 'FAIL'}  {r}")
    failed = sum(not r.ok for r in rules)
    print(f"model contract: {'every rule holds' if not failed else f'{failed} rule(s) failed'}")
    return 1 if failed else 0
