"""Argument helpers shared by the subcommands."""
from __future__ import annotations

import argparse


def parse_size(text: str) -> tuple[int, int]:
    """'128x256' -> (128, 256) as (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH (e.g. 128x256), got {text!r}") from None
    if h < 8 or w < 8 or h > 4096 or w > 4096:
        raise argparse.ArgumentTypeError(f"size {text} outside 8..4096")
    return h, w


def option_defaults(add_arguments) -> dict:
    """dest -> default of a command's options, from a parser built for the purpose (the namespace
    alone cannot tell an option the user set from its default)."""
    p = argparse.ArgumentParser(add_help=False)
    add_arguments(p)
    return {a.dest: a.default for a in p._actions}


def refuse_unused(args: argparse.Namespace, add_arguments, rules) -> None:
    """No silent no-op: ``rules`` are ``(applies, dests, why)``; the first rule that applies to
    options of ``dests`` set off their default refuses them in one line (``ValueError``: exit 2)."""
    defaults = option_defaults(add_arguments)
    for applies, dests, why in rules:
        hit = [d for d in dests if applies and getattr(args, d) != defaults[d]]
        if hit:
            raise ValueError(f"{', '.join('--' + d.replace('_', '-') for d in hit)}: {why}")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")


def add_code_architecture(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-code-architecture", action="store_true",
                        help="let --model be 'module:function' (a builder in your own code, imported from "
                             "PYTHONPATH) instead of a registered name; without it, declare the builder in "
                             "the entry-point group 'tta_perception.architectures'")


def device_of(args: argparse.Namespace):
    """The ``torch.device`` of ``--device`` (``runtime.devices``: the rule every command shares)."""
    from ..runtime.devices import resolve_device

    return resolve_device(args.device, "--device")


def source_model(task: str, weights=None, device="cpu"):
    """The committed source model of ``task`` ('seg'/'cls'), or the checkpoint ``weights``: built as
    the architecture it records (``train-source`` writes it: ``lite0_seg``, ...), a plain state dict
    loaded into the task's embedded architecture."""
    from ..bench.common import model_spec
    from ..models.checkpoint import CheckpointError, read_checkpoint
    from ..runtime.model_loader import load_model

    spec = model_spec(task, None, weights)
    if weights is not None:
        try:
            recorded = read_checkpoint(weights).get("arch")
        except CheckpointError:
            recorded = None  # the loader below says what is wrong with the file
        if recorded:
            spec = {"model": str(weights)}
    return load_model(**spec, task=task, device=device, label="--weights",
                      architecture_label="--weights").model
