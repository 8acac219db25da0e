"""``tta-perception <command>``: each command lives in its own module of this package.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``,
and keeps heavy imports (torch, rclpy) inside ``run`` so ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..runtime.memory import keep_freed_memory  # ctypes and os only: --help stays instant

# subcommand name -> module under tta_perception.cli
COMMANDS = {
    "render": "render",
    "train-source": "train_source",
    "evaluate": "evaluate",
    "demo": "demo",
    "check-model": "check_model",
    "prepare": "prepare",
    "bench": "bench",
    "make-bag": "make_bag",
    "replay": "replay",
    "fleet": "fleet",
    "node-bench": "node_bench",
    "calibrate-domains": "calibrate_domains",
    "calibrate-quality": "calibrate_quality",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tta-perception",
        description="Online test-time adaptation (DPLOT + baselines) for camera perception.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"tta_perception.cli.{module_name}")
        p = sub.add_parser(name, help=module.HELP.replace("%", "%%"), description=module.HELP,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # bench --detach runs the same command again
    keep_freed_memory()
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as err:  # user errors: one clear line, no traceback wall
        print(f"tta-perception {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
