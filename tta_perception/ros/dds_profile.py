"""The shipped DDS profile for large camera frames: which file, and the environment that applies it.

Fast DDS's default shared-memory segment (512 KiB per process) cannot hold large frames, and a
best-effort reader on the same host loses most of them (measured: 0-21 of 100 640x480 rgb8 frames at
10 Hz). The
profile in ``ros/dds/`` gives the PUBLISHING process a 32 MiB segment (100 of 100 at 640x480 and
1920x1080) and larger socket buffers for other hosts. DDS reads it from an environment variable when a
participant is created, so it must be set before ``rclpy.init`` (:func:`apply`) or in the environment
of a child process (:func:`profile_env`; ``adapt.launch.py dds_profile:=``). No rclpy import here.

``choice`` is ``default`` (the shipped file for the RMW in use), ``none`` (set nothing) or the path
of an XML profile. A variable the environment already sets is kept with ``default`` (the user's own
profile wins, and :func:`resolve` says so) and replaced with an explicit path. A path is only read
and parsed here (a regular .xml file of at most 1 MiB, well-formed, of the RMW's kind), then handed to
DDS by name; it is never executed.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, MutableMapping, Optional

from tta_perception import files

HERE = Path(__file__).resolve().parent / "dds"
FASTDDS_FILE = HERE / "fastdds_large_frames.xml"
CYCLONEDDS_FILE = HERE / "cyclonedds_large_frames.xml"

DEFAULT_RMW = "rmw_fastrtps_cpp"
FASTDDS_RMWS = ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")
CYCLONEDDS_RMWS = ("rmw_cyclonedds_cpp",)
#: Fast DDS 3 (Kilted on) reads this one ...
FASTDDS_VAR = "FASTDDS_DEFAULT_PROFILES_FILE"
#: ... Fast DDS 2 (Humble: 2.6, Jazzy: 2.14) this one; Kilted's rmw_fastrtps still reads it too, with a
#: deprecation warning in every process, so it is set only where Fast DDS 2 runs (or may run).
FASTRTPS_VAR = "FASTRTPS_DEFAULT_PROFILES_FILE"
FASTDDS_2_DISTROS = ("foxy", "galactic", "humble", "iron", "jazzy")
CYCLONEDDS_VAR = "CYCLONEDDS_URI"

LABEL = "dds_profile"
MAX_BYTES = files.MiB  # the shipped profiles are 3 kB; a DDS profile is never megabytes
CHOICES = "give default, none or the path of a DDS XML profile"


@dataclass(frozen=True)
class Resolved:
    """What a choice means here: the profile file (None: nothing to apply), the variables to add to a
    child's environment, and one line that says what happens (for the launch log)."""

    path: Optional[Path]
    env: dict = field(default_factory=dict)
    note: str = ""


def _rmw(rmw: Optional[str], environ: Mapping[str, str]) -> str:
    return (rmw or environ.get("RMW_IMPLEMENTATION", "") or DEFAULT_RMW).strip()


def _family(rmw: str) -> Optional[str]:
    if rmw in FASTDDS_RMWS:
        return "fastdds"
    if rmw in CYCLONEDDS_RMWS:
        return "cyclonedds"
    return None


def _keyword(choice: str) -> str:
    return str(choice).strip().lower()


def _xml_family(path: Path) -> str:
    """'fastdds' or 'cyclonedds' from the root element of a user's file; ValueError in one line."""
    shown = str(path)
    why = files.problem(path, LABEL, "DDS profile", MAX_BYTES)
    if why:
        raise ValueError(f"{why} ({CHOICES})")
    if path.suffix.lower() != ".xml":
        raise ValueError(f"{LABEL}: {shown!r} is not an .xml file ({CHOICES})")
    data = files.read_bytes(path, LABEL, "DDS profile", MAX_BYTES)  # FileProblem is a ValueError
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise ValueError(f"{LABEL}: {shown!r} is not well-formed XML ({err})") from None
    tag = root.tag.rsplit("}", 1)[-1]
    if tag in ("dds", "profiles"):
        return "fastdds"
    if tag == "CycloneDDS":
        return "cyclonedds"
    raise ValueError(f"{LABEL}: {shown!r} has root element <{tag}>, neither a Fast DDS profile (<dds> or "
                     "<profiles>) nor a Cyclone DDS configuration (<CycloneDDS>)")


def _user_path(choice: str, rmw: str) -> Path:
    if not str(choice).strip():
        raise ValueError(f"{LABEL} is empty: {CHOICES}")
    path = Path(os.path.abspath(os.path.expanduser(str(choice).strip())))  # children may run elsewhere
    kind = _xml_family(path)
    family = _family(rmw)
    if family is None:
        raise ValueError(f"{LABEL}: RMW_IMPLEMENTATION={rmw} reads no Fast DDS or Cyclone DDS profile; "
                         f"give {LABEL}:=none")
    if kind != family:
        names = {"fastdds": "a Fast DDS profile", "cyclonedds": "a Cyclone DDS configuration"}
        raise ValueError(f"{LABEL}: {str(path)!r} is {names[kind]}, but the RMW is {rmw}")
    if family == "cyclonedds" and "," in str(path):
        raise ValueError(f"{LABEL}: {str(path)!r} has a comma, which {CYCLONEDDS_VAR} takes as a separator")
    return path


def profile_path(choice: str, rmw: Optional[str] = None) -> Optional[Path]:
    """The profile file a choice names: ``default`` -> the shipped file for ``rmw`` (default: the
    environment's RMW_IMPLEMENTATION, else rmw_fastrtps_cpp; None for an RMW without one, see
    :func:`resolve` for the reason), ``none`` -> None, else the user's path, checked (ValueError with
    one line when it is missing, not a regular .xml file, not well-formed or for the other DDS)."""
    rmw = _rmw(rmw, os.environ)
    keyword = _keyword(choice)
    if keyword == "none":
        return None
    if keyword == "default":
        return {"fastdds": FASTDDS_FILE, "cyclonedds": CYCLONEDDS_FILE}.get(_family(rmw))
    return _user_path(choice, rmw)


def _wheel_major() -> Optional[int]:
    """The Fast DDS major version of the ROS 2 wheels from PyPI (which set no ROS_DISTRO), else None."""
    for distribution, major in (("ros-fastdds", 3), ("ros-fastrtps", 2)):
        try:
            importlib.metadata.version(distribution)
            return major
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def fastdds_variables(environ: Optional[Mapping[str, str]] = None) -> tuple:
    """(the variables to set, the variables that Fast DDS reads) for a process with ``environ``: from
    ROS_DISTRO (a sourced ROS install), else from the installed wheels; both of each where unknown."""
    environ = os.environ if environ is None else environ
    distro = environ.get("ROS_DISTRO", "").strip().lower()
    major = (2 if distro in FASTDDS_2_DISTROS else 3) if distro else _wheel_major()
    if major == 2:
        return (FASTRTPS_VAR,), (FASTRTPS_VAR,)
    if major == 3:
        return (FASTDDS_VAR,), (FASTDDS_VAR, FASTRTPS_VAR)
    return (FASTDDS_VAR, FASTRTPS_VAR), (FASTDDS_VAR, FASTRTPS_VAR)


def resolve(choice: str, environ: Optional[Mapping[str, str]] = None) -> Resolved:
    """The profile, the variables to add and a one-line note, for a process started with ``environ``
    (default: this process's). ``default`` adds nothing where ``environ`` already names a profile for
    the RMW (the user's own setting wins); an explicit path replaces it."""
    environ = os.environ if environ is None else environ
    rmw = _rmw(None, environ)
    family = _family(rmw)
    keyword = _keyword(choice)
    if keyword == "none":
        return Resolved(None, {}, f"{LABEL}:=none: no DDS profile set")
    if keyword == "default" and family is None:
        shipped = ", ".join(FASTDDS_RMWS + CYCLONEDDS_RMWS)
        return Resolved(None, {}, f"{LABEL}:=default: no shipped profile for RMW_IMPLEMENTATION={rmw} "
                                  f"(there are profiles for {shipped}); nothing set")
    path = profile_path(choice, rmw)
    if family == "fastdds":
        names, read = fastdds_variables(environ)
        value = str(path)
    else:
        names, read, value = (CYCLONEDDS_VAR,), (CYCLONEDDS_VAR,), f"file://{path}"
    present = {name: environ[name] for name in read if environ.get(name, "").strip()}
    if keyword == "default" and present:
        name, old = next(iter(present.items()))
        return Resolved(None, {}, f"{LABEL}:=default keeps {name}={old} from the environment (give "
                                  f"{LABEL}:=<path> to replace it)")
    env = {name: value for name in (*names, *present)}  # a path replaces every variable DDS would read
    what = "the shipped profile for large frames" if keyword == "default" else "the given profile"
    note = f"{LABEL}: {what}, {names[0]}={value}"
    replaced = [f"{name}={old}" for name, old in present.items() if old != value]
    if replaced:
        note += f" (replaces {', '.join(replaced)})"
    return Resolved(path, env, note)


def profile_env(choice: str, environ: Optional[Mapping[str, str]] = None) -> dict:
    """The environment variables to add for a child process (``{}`` for ``none``, for ``default``
    where ``environ`` names its own profile, and for an RMW without a shipped one): Fast DDS ->
    FASTDDS_DEFAULT_PROFILES_FILE (Fast DDS 3) or FASTRTPS_DEFAULT_PROFILES_FILE (Fast DDS 2: Humble,
    Jazzy), both where the version is unknown (:func:`fastdds_variables`); Cyclone DDS ->
    CYCLONEDDS_URI=file://<path>."""
    return dict(resolve(choice, environ).env)


def apply(choice: str = "default", environ: Optional[MutableMapping[str, str]] = None) -> str:
    """Set the profile in this process's environment (or ``environ``) and return the one-line note.

    Call it before the first ``rclpy.init`` of the process: Fast DDS reads its profile file once, when
    the process creates its first participant, and ignores later changes (a RuntimeError says so while
    rclpy is initialised)."""
    rclpy = sys.modules.get("rclpy")
    if environ is None and rclpy is not None and getattr(rclpy, "ok", lambda: False)():
        raise RuntimeError(f"{LABEL}: apply() after rclpy.init(): DDS has read its profile already; "
                           "apply it before rclpy.init()")
    target = os.environ if environ is None else environ
    resolved = resolve(choice, target)
    target.update(resolved.env)
    return resolved.note
