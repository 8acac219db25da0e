"""Every ``.pt`` the package reads (checkpoints, bundles, adapted states, replay checkpoints) is read
here: ``torch.load(weights_only=True)``, so no file can make the process run code, and a refusal is
one line that says what was refused and why — never PyTorch's advice to re-run with
``weights_only=False``, and no escape sequences copied from the file into a log or a terminal."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Sequence

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


class WeightsOnlyError(ValueError):
    """A file that cannot be read as weights; ``reason`` is one sanitised line."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def clean(text: str, limit: int = 200) -> str:
    """``text`` without escape sequences or control characters, on one line, at most ``limit``."""
    text = _CONTROL.sub("?", _ANSI.sub("", str(text))).strip()
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reason_of(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused, without PyTorch's advice."""
    text = str(err)
    found = _GLOBAL.search(text)
    if found:
        return (f"refused: it holds Python objects beyond tensors and containers (global "
                f"{clean(found.group(1), 80)}); only weights are loaded")
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        return "refused: not a weights-only torch file (unsupported pickle content)"
    first = next((line for line in text.splitlines() if line.strip()), type(err).__name__)
    return f"corrupt or truncated ({type(err).__name__}: {clean(first, 120)})"


def load(path: str | Path, map_location: Any = "cpu", allowed_globals: Sequence[Any] = (),
         max_bytes: Optional[int] = None) -> Any:
    """The object in ``path``, weights only; ``allowed_globals`` extend PyTorch's safe list
    (e.g. NumPy scalars in research checkpoints). :class:`WeightsOnlyError` otherwise, also for a
    path that is no regular file or is over ``max_bytes`` (default: ``files.CAPS['weights']``):
    opened through ``files.open_regular``, so a FIFO or a device never blocks or floods the reader."""
    import contextlib

    import torch

    from .files import FileProblem, open_regular

    path = Path(path)
    safe = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    # built outside the try: a torch that rejects an entry raises TypeError for the caller to handle
    ctx = safe(list(allowed_globals)) if (allowed_globals and safe) else contextlib.nullcontext()
    try:
        fh = open_regular(path, "file", "weights", max_bytes)
    except FileProblem as err:
        raise WeightsOnlyError(path, err.what) from None
    try:
        with fh, ctx:
            return torch.load(fh, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated zip, random bytes, pickled code refused by weights_only
        raise WeightsOnlyError(path, reason_of(err)) from None
