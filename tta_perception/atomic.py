"""Atomic file writes, in one place: every file the package saves (adapted states, checkpoints,
bundles, replay checkpoints, caches, reports, plots) goes through :func:`atomic_write`.

A reader, a crash or a power cut never sees a half-written file: the data is written to a hidden
temporary file beside the destination (``.<name>.<pid>-<n>.tmp``), flushed to disk (``fsync``),
renamed over the destination (``os.replace``, atomic on POSIX) and the directory entry is flushed
too, so after a power loss the path holds either the previous or the new content.
:func:`remove_orphans` deletes the temporary files a killed process left behind.
"""
from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Any, Callable

_COUNTER = itertools.count()
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-\d+\.tmp")


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(str(path), flags)
    except OSError:  # a file system that cannot open directories: nothing more to do
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """The hidden temporary name :func:`atomic_write` writes ``path`` through."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{next(_COUNTER)}.tmp{suffix}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], suffix: str = "",
                 mode: int | None = None) -> Path:
    """``write(tmp)`` creates the content at ``tmp``; then fsync, rename onto ``path``, fsync the
    directory. ``suffix`` keeps an extension a writer needs (``.npz``, ``.png``); ``mode`` sets the
    file's permissions. The temporary file is removed whatever happens."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write` (read back with ``weights_only=True``)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, str(tmp)))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (ours counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_orphans(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` in ``directory`` whose process is gone
    (a kill -9 during a save); returns what was removed."""
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TMP_RE.match(entry.name)
        if match is None or pid_alive(int(match["pid"])) or not entry.is_file():
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed
