"""Make an editable install findable by package name, as launch_ros and ``ros2 launch`` look it up.

    python -m tta_perception.install_ament --prefix .venv      # `make setup` runs this

``pip install -e`` skips setup.py's ``data_files``: the environment then has no ament index entry
(``share/ament_index/resource_index/packages/tta_perception``), no ``share/tta_perception/`` (package.xml,
launch, config) and no ``lib/tta_perception/<executables>``, and ``ros2 launch tta_perception ...`` says
"package 'tta_perception' not found". This step creates exactly those ``data_files`` (read from the
checkout's setup.py, so pip, colcon and this step install one list) in the prefix, as symlinks into the
checkout like ``colcon build --symlink-install``: edits to launch and config files apply without
reinstalling; a new file needs the step again (``make setup`` reruns it). Each file is its own link in
real directories, because ``ros2 launch`` finds a launch file by walking ``share/<package>`` without
following directory links. The ``lib/`` entries are the launchers of ``ros/bin/``: reached through
``<prefix>/lib/tta_perception/``, they run the node with ``<prefix>/bin/python3``.

Idempotent: a link to the same file, or a file with the same content (a non-editable install's copy),
is kept; a dangling link (the checkout moved) is replaced; anything else at a target path is refused,
before anything is written.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import sys
from pathlib import Path

PACKAGE = "tta_perception"


class InstallError(Exception):
    """A one-line reason the prefix was left as it was."""


def source_root() -> Path:
    """The checkout this package is imported from (an editable install points into it)."""
    root = Path(__file__).resolve().parent.parent
    if not ((root / "setup.py").is_file() and (root / "package.xml").is_file()):
        raise InstallError(f"{PACKAGE} is imported from {root}, not from a source checkout (a "
                           "non-editable install has these files already; else pass --source)")
    return root


def data_files(root: Path) -> list[tuple[str, list[str]]]:
    """setup.py's ``data_files`` (its globs are relative to the checkout), without building anything."""
    try:
        import setuptools  # noqa: F401  (provides distutils on Python >= 3.12)
        from distutils.core import run_setup
    except ImportError:
        raise InstallError("setuptools is needed to read setup.py: pip install setuptools") from None
    cwd = os.getcwd()
    os.chdir(root)
    try:
        dist = run_setup("setup.py", script_args=[], stop_after="init")
    finally:
        os.chdir(cwd)
    return [(target, list(files)) for target, files in (dist.data_files or [])]


def plan(root: Path, prefix: Path) -> list[tuple[Path, Path]]:
    """(link in the prefix, file in the checkout) for every data file."""
    pairs = []
    for target_dir, files in data_files(root):
        for name in files:
            source = (root / name).resolve()
            if not source.is_file():
                raise InstallError(f"{source}: listed in setup.py's data_files but missing")
            pairs.append((prefix / target_dir / source.name, source))
    return pairs


def _state(link: Path, source: Path, prefix: Path) -> str:
    """'new', 'kept' or 'stale' (a dangling link); raises for anything this step did not make."""
    share = prefix / "share" / PACKAGE
    for parent in reversed(link.relative_to(prefix).parents[:-1]):  # the folders below the prefix
        folder = prefix / parent
        if folder.exists() and not folder.is_dir():
            raise InstallError(f"refusing to replace {folder}: not a folder (remove it and run again)")
        if folder.is_symlink() and share in folder.parents:  # ros2 launch would not look inside
            raise InstallError(f"refusing to use {folder}: a link to a folder, which ros2 launch does not "
                               "search (remove it and run again)")
    if link.is_symlink():
        if not link.exists():
            return "stale"
        if link.resolve() == source:
            return "kept"
    elif not link.exists():
        return "new"
    elif link.is_file() and filecmp.cmp(link, source, shallow=False):
        return "kept"
    raise InstallError(f"refusing to replace {link}: it is not a link to {source} "
                       "(remove it and run again)")


def install(prefix: Path, root: Path | None = None) -> list[tuple[Path, Path, str]]:
    """Create the links; returns (link, source, 'new' | 'kept' | 'stale') for each data file."""
    root = source_root() if root is None else root.resolve()
    prefix = Path(os.path.abspath(prefix))  # absolute, without ".." parts
    if not prefix.is_dir():
        raise InstallError(f"prefix {prefix} does not exist (create the venv first)")
    done = [(link, source, _state(link, source, prefix)) for link, source in plan(root, prefix)]
    for link, source, state in done:  # all checked first: a refusal leaves the prefix untouched
        if state == "kept":
            continue
        if state == "stale":
            link.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PACKAGE}.install_ament",
        description="Link setup.py's data_files (ament index entry, share/, lib/ launchers) of an editable "
                    "install into PREFIX, so launch_ros finds the package with AMENT_PREFIX_PATH=PREFIX.")
    parser.add_argument("--prefix", type=Path, default=Path(sys.prefix),
                        help="install prefix, e.g. the venv (default: this interpreter's, %(default)s)")
    parser.add_argument("--source", type=Path, default=None,
                        help="the checkout (default: the one this package is imported from)")
    args = parser.parse_args(argv)
    try:
        done = install(args.prefix, args.source)
    except InstallError as err:
        print(f"install_ament: error: {err}", file=sys.stderr)
        return 1
    for link, source, state in done:
        if state != "kept":
            print(f"linked {link} -> {source}")
    made = sum(state != "kept" for _, _, state in done)
    print(f"{PACKAGE}: {len(done)} ament entries in {os.path.abspath(args.prefix)} ({made} new, "
          f"{len(done) - made} already there)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
