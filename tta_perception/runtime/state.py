"""Adapted-state files: what ``~/save`` writes, ``resume_from`` loads and the node parks while it is
inactive. Written atomically (``atomic``), read back with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from ..atomic import atomic_torch_save

STATE_FORMAT = "tta_perception.ros/1"  # the marker of a node state (kept: files saved earlier load)


def to_cpu(obj: Any) -> Any:
    """The same nested state with every tensor detached and on the CPU."""
    from ..engine.model_utils import map_tensors

    return map_tensors(obj, lambda t: t.detach().cpu())


def save_state_file(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` atomically: a reader (or a crash) never sees a half-written file."""
    atomic_torch_save(state, path)


def load_state_file(path: Path) -> dict[str, Any]:
    """A state written by :func:`save_state_file` (weights only: no code runs while loading)."""
    from .. import weights_only

    state = weights_only.load(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError("not a tta_node state (format marker missing)")
    return state


def default_save_path(node_name: str, ros_home: Optional[str] = None) -> Path:
    """``$ROS_HOME/tta_perception/<node>.pt`` (``~/.ros`` when ROS_HOME is unset)."""
    home = Path(ros_home or os.environ.get("ROS_HOME") or Path.home() / ".ros")
    return home / "tta_perception" / f"{node_name}.pt"
