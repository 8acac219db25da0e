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


def default_state_dir(ros_home: Optional[str] = None) -> Path:
    """``$ROS_HOME/tta_perception`` (``~/.ros`` when ROS_HOME is unset): where a node's states live."""
    home = Path(ros_home or os.environ.get("ROS_HOME") or Path.home() / ".ros")
    return home / "tta_perception"


def state_dir_of(configured: str) -> Path:
    """The directory ``~/save`` may write in: the ``state_dir`` parameter (fixed at start-up), else
    the default; links resolved, so a save can be checked against where it really lands."""
    from ..files import resolved

    return resolved(configured.strip() or default_state_dir())


def save_target(save_path: str, state_dir: Path, node_name: str) -> Path:
    """Where ``~/save`` writes for the ``save_path`` parameter: a file name or a relative path inside
    ``state_dir``, or an absolute path that lies inside it (every link resolved). ``ValueError`` (one
    line) for anything that would land elsewhere, so no peer can make the node write outside it."""
    from ..files import resolved

    name = save_path.strip()
    if not name:
        return state_dir / f"{node_name}.pt"
    if "\x00" in name:
        raise ValueError("parameter 'save_path' contains a NUL character")
    candidate = Path(os.path.expanduser(name))
    target = resolved(candidate if candidate.is_absolute() else state_dir / candidate)
    if target == state_dir or state_dir not in target.parents:
        raise ValueError(f"parameter 'save_path' {name!r} lies outside the state directory {str(state_dir)!r}: "
                         "give a file name in it, or start the node with another 'state_dir'")
    return target


def is_state_file(path: Path) -> bool:
    """Whether ``path`` holds a node state (a torch zip whose pickle carries :data:`STATE_FORMAT`),
    read without unpickling anything: the only kind of file ``~/save`` may replace."""
    import zipfile

    from ..files import open_regular

    try:
        with open_regular(path, "state") as fh, zipfile.ZipFile(fh) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1 or archive.getinfo(pickles[0]).file_size > 64 << 20:
                return False
            return STATE_FORMAT.encode() in archive.read(pickles[0])
    except (OSError, ValueError, zipfile.BadZipFile, RuntimeError):
        return False


def check_replaceable(path: Path) -> Optional[str]:
    """Why ``~/save`` must not write ``path`` (None: it may): an existing entry that is a link, not
    a regular file, or a regular file that is not a node state is never replaced."""
    import stat as stat_

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"{str(path)!r} cannot be checked ({err.strerror or err})"
    if stat_.S_ISLNK(st.st_mode):
        return f"{str(path)!r} is a symbolic link: not replaced"
    if not stat_.S_ISREG(st.st_mode):
        return f"{str(path)!r} exists and is not a regular file: not replaced"
    if not is_state_file(path):
        return f"{str(path)!r} exists and is not a tta_node state: not replaced"
    return None
