"""The one gate for reading a file whose path came from outside (a node parameter, a command-line
option): a regular file only, bounded in size, and never a blocking open.

Without SROS2 any peer on the DDS domain may set a parameter, so a path it names can be a directory, a
FIFO (an ordinary ``open`` waits for a writer for ever), ``/dev/zero`` (a read never ends) or a file of
gigabytes. :func:`open_regular` opens with ``O_NONBLOCK`` (a FIFO cannot block the open), checks the
*opened* descriptor with ``fstat`` (what is read is what was checked, whatever the path points to a
moment later) and refuses anything but a regular file within the cap of its kind (:data:`CAPS`).
:func:`problem` says the same from the path alone, for answering a parameter change at once.
Every message is one line that names the option and what the path really is.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Optional

MiB = 1 << 20
#: the largest file of each kind that is read (bytes). Weights: more than any network a node on a
#: robot runs (the node also refuses what is over its ``max_memory_mb``); calibrations are a few kB;
#: parameter files a few hundred lines.
CAPS = {
    "weights": 8192 * MiB,
    "calibration": 1 * MiB,
    "parameter": 4 * MiB,
}

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


class FileProblem(ValueError):
    """A path that is not a readable regular file within its cap; the message is one line,
    ``what`` the part after the path ("is a FIFO (named pipe), not a weights file")."""

    def __init__(self, label: str, path: str | os.PathLike, what: str) -> None:
        super().__init__(f"{label}: {str(path)!r} {what}")
        self.what = what


def _size(n: int) -> str:
    return f"{n / MiB:.0f} MB" if n >= MiB else f"{n} bytes"


def _what(mode: int) -> Optional[str]:
    """What a non-regular file is (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _cap(kind: str, max_bytes: Optional[int]) -> int:
    return CAPS.get(kind, CAPS["weights"]) if max_bytes is None else int(max_bytes)


def _judge(st: os.stat_result, kind: str, max_bytes: Optional[int]) -> Optional[str]:
    """What is wrong with a file of this ``stat`` (the words after its path), or None."""
    what = _what(st.st_mode)
    if what:
        return f"is {what}, not a {kind} file"
    cap = _cap(kind, max_bytes)
    if st.st_size > cap:
        return f"is {_size(st.st_size)}, over the {_size(cap)} a {kind} file may have"
    return None


def problem(path: str | os.PathLike, label: str, kind: str = "weights",
            max_bytes: Optional[int] = None) -> Optional[str]:
    """Why ``path`` cannot be read as a ``kind`` file (None: it can), from ``stat`` alone (no open,
    so it never blocks): missing, a directory, a FIFO, a device, or over the cap."""
    try:
        st = os.stat(os.path.expanduser(os.fspath(path)))
    except FileNotFoundError:
        what: Optional[str] = "not found"
    except OSError as err:
        what = f"cannot be read ({err.strerror or err})"
    else:
        what = _judge(st, kind, max_bytes)
    return f"{label}: {str(path)!r} {what}" if what else None


def open_regular(path: str | os.PathLike, label: str = "file", kind: str = "weights",
                 max_bytes: Optional[int] = None) -> BinaryIO:
    """``path`` opened for binary reading, if it is a regular file within the cap of ``kind``
    (``max_bytes`` overrides it); :class:`FileProblem` otherwise, ``FileNotFoundError`` when it is
    missing (callers already say "not found" their way)."""
    full = os.path.expanduser(os.fspath(path))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(full, flags)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise FileProblem(label, path, f"is a directory, not a {kind} file") from None
    except OSError as err:
        raise FileProblem(label, path, f"cannot be opened ({err.strerror or err})") from None
    try:
        what = _judge(os.fstat(fd), kind, max_bytes)
        if what:
            raise FileProblem(label, path, what)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: ordinary reads from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, label: str = "file", kind: str = "weights",
               max_bytes: Optional[int] = None) -> bytes:
    """The whole content of a regular file within its cap (see :func:`open_regular`)."""
    cap = _cap(kind, max_bytes)
    with open_regular(path, label, kind, max_bytes) as fh:
        data = fh.read(cap + 1)  # a file that grew after the check is still bounded
    if len(data) > cap:
        raise FileProblem(label, path, f"is over the {_size(cap)} a {kind} file may have")
    return data


def resolved(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded and every link resolved (what a write would really touch)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
