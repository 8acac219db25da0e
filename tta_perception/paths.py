"""Where shipped data lives, in a source checkout, a pip install and a colcon install alike."""
from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "tta_perception"
PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "weights"


def share_dirs() -> list[Path]:
    """Candidate ``share/tta_perception`` folders, most specific first."""
    dirs = [PACKAGE_DIR.parent]  # source checkout or editable install: the repository root
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            dirs.append(Path(prefix) / "share" / PACKAGE)
    dirs.append(Path(sys.prefix) / "share" / PACKAGE)
    return dirs


def config_path(*parts: str) -> Path:
    """Path of a shipped file under ``config/`` (e.g. ``config_path("sequences", "dynamic.yaml")``)."""
    for base in share_dirs():
        candidate = base.joinpath("config", *parts)
        if candidate.exists():
            return candidate
    searched = ", ".join(str(b / "config") for b in share_dirs())
    raise FileNotFoundError(f"config file {'/'.join(parts)!r} not found (searched {searched})")
