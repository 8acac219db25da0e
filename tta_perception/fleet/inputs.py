"""The bags of a fleet run, from what the user named: bag folders, folders holding bags (searched
below, not inside a bag), glob patterns, and text files listing one of these per line.

A list file is read as paths only (``#`` starts a comment; relative entries are relative to the
file's folder), through ``files.read_bytes`` (a regular file within a size cap): nothing in it is
executed or imported. Every bag gets a name for its outputs: the folder's name, or with the
parent folders needed to tell bags of the same name apart (``night/a``, ``rain/a``), so the names
depend on the list alone and a resumed run finds the same ones.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable

from ..files import FileProblem, read_bytes

LIST_CAP = 4 << 20          # bytes of a bag list
MAX_DEPTH = 8               # folders below a named folder searched for bags
STORAGE_SUFFIXES = (".mcap", ".db3")


def is_bag(path: Path) -> bool:
    return path.is_dir() and (path / "metadata.yaml").is_file()


def _bags_below(root: Path) -> list[Path]:
    """Bag folders below ``root`` in sorted order, not descending into a bag or a hidden folder."""
    found: list[Path] = []
    base = len(root.parts)
    for folder, dirs, _ in os.walk(root):
        here = Path(folder)
        if is_bag(here):
            found.append(here)
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and len(here.parts) - base < MAX_DEPTH)
    return sorted(found)


def _read_list(path: Path) -> list[str]:
    try:
        text = read_bytes(path, "bag list", kind="bag list", max_bytes=LIST_CAP).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"bag list {path}: not UTF-8 text (one bag folder per line)") from None
    except FileProblem as err:
        raise ValueError(str(err)) from None
    out = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            out.append(entry if os.path.isabs(os.path.expanduser(entry)) else str(path.parent / entry))
    return out


def _expand(item: str, depth: int) -> list[Path]:
    """One name: a bag, a folder of bags, a glob or a list file (lists may name lists, 4 deep)."""
    path = Path(item).expanduser()
    if any(c in item for c in "*?["):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(item), recursive=True))
        if not matches:
            raise ValueError(f"no bag matches {item!r}")
        return [b for m in matches for b in ([m] if is_bag(m) else _bags_below(m) if m.is_dir() else [])]
    if path.is_dir():
        if is_bag(path):
            return [path]
        below = _bags_below(path)
        if not below:
            raise ValueError(f"{path}: no bag folder (with metadata.yaml) in it or below it")
        return below
    if path.is_file():
        if path.suffix in STORAGE_SUFFIXES:
            raise ValueError(f"{path} is a storage file: give its bag folder (the one with metadata.yaml)")
        if depth >= 4:
            raise ValueError(f"bag list {path}: lists nested more than 4 deep")
        return [b for entry in _read_list(path) for b in _expand_entry(entry, depth + 1)]
    raise ValueError(f"{path}: no such bag, folder, bag list or glob match")


def _expand_entry(entry: str, depth: int) -> list[Path]:
    """A list file's line: like a command-line name, except that a missing path stays in the list
    (it is reported as that bag's failure, and the others run)."""
    path = Path(entry).expanduser()
    if not any(c in entry for c in "*?[") and not path.exists():
        return [path]
    return _expand(entry, depth)


def find_bags(items: Iterable[str]) -> list[Path]:
    """The bags named by ``items`` (absolute, each once, in the order given)."""
    out: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        for bag in _expand(str(item), 0):
            bag = Path(os.path.abspath(bag))  # '..' resolved, links kept
            if bag not in seen:
                seen.add(bag)
                out.append(bag)
    if not out:
        raise ValueError("no bags given")
    return out


def bag_names(bags: list[Path]) -> dict[Path, str]:
    """A unique, filesystem-safe name per bag: the folder name, lengthened by its parent folders
    while two bags share it."""
    depth = {b: 1 for b in bags}

    def name(b: Path) -> str:
        parts = b.parts[-depth[b]:]
        return "/".join(p.replace(os.sep, "_") for p in parts).lstrip("/") or "bag"

    while True:
        groups: dict[str, list[Path]] = {}
        for b in bags:
            groups.setdefault(name(b), []).append(b)
        clash = [g for g in groups.values() if len(g) > 1]
        if not clash:
            return {b: name(b).replace("/", "__") for b in bags}
        grown = False
        for g in clash:
            for b in g:
                if depth[b] < len(b.parts) - 1:
                    depth[b] += 1
                    grown = True
        if not grown:  # identical paths cannot reach here (find_bags drops repeats)
            raise ValueError(f"bags {', '.join(map(str, clash[0]))} cannot be told apart")
