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


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available (use --device cpu or auto)")
    return dev
