"""ROS 2 bags without ROS: writing and reading with ``rosbags`` (pure Python), MCAP or sqlite3.

No rclpy or ROS import here, so ``make-bag`` and ``replay`` run on any machine. Compatibility:

- Bags are written with rosbag2 metadata **version 8** by default. Version 9 (written by Jazzy's later
  releases and Kilted) stores ``offered_qos_profiles`` as a YAML list, which Humble's metadata parser
  rejects ("yaml-cpp: bad conversion"); version 8 keeps the string form that Humble, Jazzy and Kilted
  all read. ``version=9`` is available for tools that want it.
- MCAP is the default storage (Jazzy, Kilted; Humble with ``ros-humble-rosbag2-storage-mcap``);
  sqlite3 is Humble's default and is written on request.
- Message definitions and type hashes come from the Kilted type store; for the few types used here
  (``sensor_msgs/Image``, ``CompressedImage``, ``std_msgs/String``) they are the same in every
  distro.

Nothing half-written looks complete: a bag is written into a hidden temporary folder next to its
destination and renamed into place only when it has been closed (metadata written) and, for MCAP, its
CRCs filled in (``integrity.seal_mcap``: rosbags writes none); a failure removes the temporary folder,
and one left by a killed process is removed by the next writer of the same path.

Reading checks first (``integrity``): MCAP files against their CRCs and index, sqlite3 files with
``PRAGMA quick_check``; damage is a one-line ``BagError`` naming the bag, the file, the byte offset and
the topics the damaged chunk held, or, with ``skip_damaged``, the damaged chunks are left out and
counted. A byte flipped inside a sqlite3 message blob (no checksum there) cannot be detected.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import integrity as I

TYPE_IMAGE = "sensor_msgs/msg/Image"
TYPE_COMPRESSED = "sensor_msgs/msg/CompressedImage"
TYPE_STRING = "std_msgs/msg/String"
TYPE_DIAGNOSTICS = "diagnostic_msgs/msg/DiagnosticArray"
IMAGE_TYPES = (TYPE_IMAGE, TYPE_COMPRESSED)
STORAGES = ("mcap", "sqlite3")
BAG_VERSIONS = (8, 9)
DEFAULT_BAG_VERSION = 8


class BagError(ValueError):
    """A bag that cannot be used; the message names the bag (and the topic where one is involved)."""


def _require_rosbags():
    try:
        import rosbags  # noqa: F401
    except ImportError:
        raise BagError("reading and writing bags needs the 'rosbags' package: pip install rosbags "
                       "(or pip install -e '.[bags]')") from None


_TYPESTORE = None


def typestore():
    """The message type store (Kilted's; the newest this rosbags knows otherwise)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        _require_rosbags()
        from rosbags.typesys import Stores, get_typestore

        store = getattr(Stores, "ROS2_KILTED", None) or getattr(Stores, "LATEST", None) or Stores.ROS2_JAZZY
        _TYPESTORE = get_typestore(store)
    return _TYPESTORE


# ------------------------------------------------------------------------------------- messages
def _header(stamp_ns: int, frame_id: str):
    ts = typestore()
    Time = ts.types["builtin_interfaces/msg/Time"]
    Header = ts.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=int(stamp_ns) // 1_000_000_000, nanosec=int(stamp_ns) % 1_000_000_000),
                  frame_id=str(frame_id))


def image_message(stamp_ns: int, frame_id: str, encoding: str, height: int, width: int, step: int,
                  data: bytes | np.ndarray):
    Image = typestore().types[TYPE_IMAGE]
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else \
        np.ascontiguousarray(data, np.uint8).reshape(-1)
    return Image(header=_header(stamp_ns, frame_id), height=int(height), width=int(width),
                 encoding=str(encoding), is_bigendian=0, step=int(step), data=buf)


def rgb_image_message(stamp_ns: int, frame_id: str, rgb: np.ndarray, encoding: str = "rgb8"):
    """An (H, W, 3) RGB frame as ``sensor_msgs/Image`` in any encoding the node reads."""
    from tta_perception.runtime import image_codec as codec

    if encoding == "mono8":
        grey = codec.to_grey(rgb)
        h, w, step, data = codec.mono8(grey)
    else:
        h, w, step, data = codec.rgb_to_raw(rgb, encoding)
    return image_message(stamp_ns, frame_id, encoding, h, w, step, data)


def mono8_message(stamp_ns: int, frame_id: str, array: np.ndarray):
    a = np.ascontiguousarray(array, np.uint8)
    return image_message(stamp_ns, frame_id, "mono8", a.shape[0], a.shape[1], a.shape[1], a)


def compressed_message(stamp_ns: int, frame_id: str, rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90):
    """``sensor_msgs/CompressedImage`` as image_transport writes it (format 'rgb8; jpeg compressed bgr8')."""
    import io

    from PIL import Image as PILImage

    fmt = fmt.lower()
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"compressed format must be jpeg or png, got {fmt!r}")
    out = io.BytesIO()
    kwargs = {"quality": int(quality)} if fmt == "jpeg" else {}
    PILImage.fromarray(np.ascontiguousarray(rgb, np.uint8)).save(out, format=fmt.upper(), **kwargs)
    Compressed = typestore().types[TYPE_COMPRESSED]
    return Compressed(header=_header(stamp_ns, frame_id), format=f"rgb8; {fmt} compressed bgr8",
                      data=np.frombuffer(out.getvalue(), np.uint8))


def string_message(text: str):
    return typestore().types[TYPE_STRING](data=str(text))


def diagnostic_array_message(stamp_ns: int, frame_id: str, status: dict[str, Any]):
    """``diagnostic_msgs/DiagnosticArray`` with one status (``runtime.diagnostics.quality_status``: level,
    name, message, hardware_id, (key, value) pairs) under the header of the frame it judges."""
    ts = typestore()
    Status = ts.types["diagnostic_msgs/msg/DiagnosticStatus"]
    KeyValue = ts.types["diagnostic_msgs/msg/KeyValue"]
    st = Status(level=int(status["level"]), name=str(status["name"]), message=str(status["message"]),
                hardware_id=str(status["hardware_id"]),
                values=[KeyValue(key=str(k), value=str(v)) for k, v in status["values"]])
    return ts.types[TYPE_DIAGNOSTICS](header=_header(stamp_ns, frame_id), status=[st])


def diagnostic_values(msg: Any) -> dict[str, str]:
    """The key/values of the first status of a DiagnosticArray read from a bag."""
    return {kv.key: kv.value for kv in msg.status[0].values} if msg.status else {}


def stamp_ns_of(msg: Any) -> int:
    s = msg.header.stamp
    return int(s.sec) * 1_000_000_000 + int(s.nanosec)


# --------------------------------------------------------------------------------------- writer
def _qos_profiles(kind: str) -> list:
    """Offered QoS recorded for a topic: what ``ros2 bag play`` re-offers (reliable, volatile)."""
    try:
        from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                        QosTime)
    except ImportError:  # older rosbags: no typed QoS, the player uses its defaults
        return []
    zero = QosTime(0, 0)
    durability = QosDurability.TRANSIENT_LOCAL if kind == "latched" else QosDurability.VOLATILE
    return [Qos(QosHistory.KEEP_LAST, 1 if kind == "latched" else 10, QosReliability.RELIABLE, durability,
                zero, zero, QosLiveliness.AUTOMATIC, zero, False)]


class BagWriter:
    """A new bag at ``path``, written in a temporary folder and renamed into place on ``commit``.

    Refuses an existing ``path`` unless ``overwrite`` (then the old bag is replaced only once the new
    one is complete). Use as a context manager: commit on success, abort (remove) on an exception.
    """

    def __init__(self, path: str | Path, storage: str = "mcap", version: int = DEFAULT_BAG_VERSION,
                 overwrite: bool = False):
        _require_rosbags()
        from rosbags.rosbag2 import Writer
        from rosbags.rosbag2.enums import StoragePlugin

        if storage not in STORAGES:
            raise BagError(f"bag storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        if int(version) not in BAG_VERSIONS:
            raise BagError(f"bag version must be one of {BAG_VERSIONS}, got {version!r}")
        self.path = Path(path).expanduser().absolute()
        check_output(self.path, overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_partials(self.path)
        self._tmp_root = self.path.parent / f".{self.path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp_path = self._tmp_root / self.path.name  # the storage file is named after this folder
        self.storage = storage
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        try:
            self._tmp_root.mkdir()
            self._writer = Writer(self.tmp_path, version=int(version), storage_plugin=plugin)
            self._writer.open()
        except BaseException:
            shutil.rmtree(self._tmp_root, ignore_errors=True)
            raise
        self._connections: dict[str, Any] = {}
        self._types: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self._done = False

    def add_topic(self, topic: str, msgtype: str, qos: str = "reliable") -> None:
        if topic in self._connections:
            return
        kwargs: dict[str, Any] = {"typestore": typestore()}
        profiles = _qos_profiles(qos)
        try:
            conn = self._writer.add_connection(topic, msgtype, offered_qos_profiles=profiles, **kwargs)
        except TypeError:  # older rosbags API
            conn = self._writer.add_connection(topic, msgtype, **kwargs)
        self._connections[topic] = conn
        self._types[topic] = msgtype
        self.counts[topic] = 0

    def write(self, topic: str, log_time_ns: int, msg: Any) -> None:
        data = typestore().serialize_cdr(msg, self._types[topic])
        self._writer.write(self._connections[topic], int(log_time_ns), data)
        self.counts[topic] += 1

    def write_raw(self, topic: str, log_time_ns: int, data: bytes | memoryview) -> None:
        self._writer.write(self._connections[topic], int(log_time_ns), data)
        self.counts[topic] += 1

    def extra_file(self, name: str) -> Path:
        """Path of a side file (metrics) inside the bag folder, moved into place with the bag."""
        return self.tmp_path / name

    def commit(self) -> Path:
        """Close (metadata written), seal the MCAP CRCs, then rename into place; an old bag is
        replaced only now, and put back if the rename fails."""
        if self._done:
            return self.path
        try:
            self._writer.close()
            self._seal()
            old = None
            if self.path.exists():
                old = self._tmp_root / (self.path.name + ".old")
                os.replace(self.path, old)
            try:
                os.replace(self.tmp_path, self.path)
            except BaseException:
                if old is not None:
                    os.replace(old, self.path)
                raise
        except BaseException:
            self.abort()
            raise
        self._done = True
        shutil.rmtree(self._tmp_root, ignore_errors=True)
        return self.path

    def _seal(self) -> None:
        if self.storage != "mcap":
            return
        if not I.mcap_available():
            I.warn_once(I.MCAP_MISSING)
            return
        for f in sorted(self.tmp_path.glob("*.mcap")):
            I.seal_mcap(f)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._writer.abort() if hasattr(self._writer, "abort") else None
        except Exception:  # best effort: the folder goes anyway
            pass
        shutil.rmtree(self._tmp_root, ignore_errors=True)

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


_PARTIAL_RE = re.compile(r"\.partial-(\d+)-[0-9a-f]+$")


def _remove_dead_partials(path: Path) -> None:
    """Temporary folders of ``path`` left by a process that was killed (its pid is gone)."""
    from tta_perception.atomic import pid_alive

    prefix = f".{path.name}.partial-"
    try:
        entries = [e for e in path.parent.iterdir() if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        m = _PARTIAL_RE.search(entry.name)
        if m and entry.is_dir() and not pid_alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def check_output(path: str | Path, overwrite: bool) -> None:
    """BagError unless ``path`` may be written: absent, or with ``overwrite`` a bag folder
    (metadata.yaml) or an empty folder — never an arbitrary folder or file given by mistake."""
    path = Path(path).expanduser().absolute()
    if not path.exists():
        return
    if not overwrite:
        raise BagError(f"output {path} exists already; pass --overwrite to replace it (nothing was written)")
    if not (path.is_dir() and ((path / "metadata.yaml").is_file() or not any(path.iterdir()))):
        raise BagError(f"output {path} exists and is not a bag (no metadata.yaml); refusing to replace it, "
                       "even with --overwrite")


# --------------------------------------------------------------------------------------- reader
class BagReader:
    """A bag opened with ``rosbags.highlevel.AnyReader``, checked first; every error names the bag
    (and topic).

    Before rosbags opens the bag its storage files are checked (``integrity``): damage is a
    ``BagError`` naming the file, the byte offset and the topics of the damaged chunk. With
    ``skip_damaged`` (``replay --skip-bad``) damaged MCAP chunks are left out instead: ``damage`` lists
    them, ``skipped(topic)`` counts their messages, and a message that cannot be deserialised is
    skipped and counted in ``undecodable``. Damage to a file's footer or index, or to a sqlite3
    database, is never skippable.
    """

    def __init__(self, path: str | Path, skip_damaged: bool = False):
        _require_rosbags()
        from rosbags.highlevel import AnyReader

        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        if self.path.is_file():
            raise BagError(f"bag {self.path} is a file: give the bag folder (the one with metadata.yaml)")
        if not (self.path / "metadata.yaml").is_file():
            raise BagError(f"bag {self.path}: no metadata.yaml (not a ROS 2 bag folder, or a recording "
                           "that did not finish; `ros2 bag reindex` can rebuild it)")
        self.storage = _storage_of(self.path)
        self.files = _storage_files(self.path, self.storage)
        self.skip_damaged = bool(skip_damaged)
        self.checks: list[I.FileCheck] = []
        self.damage: list[I.Damage] = []
        self.undecodable = 0
        self._check()
        try:
            self._reader = AnyReader([self.path], default_typestore=typestore())
            self._reader.open()
        except Exception as err:
            raise BagError(f"bag {self.path} cannot be opened: {_one_line(err)}") from None
        self.topics: dict[str, tuple[str, int]] = {}
        for conn in self._reader.connections:
            msgtype, count = self.topics.get(conn.topic, (conn.msgtype, 0))
            self.topics[conn.topic] = (conn.msgtype, count + int(conn.msgcount or 0))

    def _check(self) -> None:
        """Check every storage file; raise on damage unless it is skippable and skipping was asked."""
        if self.storage == "mcap":
            if not I.mcap_available():
                I.warn_once(I.MCAP_MISSING)
                return
            check = I.check_mcap
        elif self.storage == "sqlite3":
            check = I.check_sqlite
        else:
            return
        for f in self.files:
            if not f.is_file():
                continue  # rosbags names the missing file
            try:
                self.checks.append(check(f))
            except OSError as err:
                raise BagError(f"bag {self.path}: file {f.name} cannot be read: {_one_line(err)}") from None
        found = [d for c in self.checks for d in c.damage]
        fatal = [d for d in found if not d.skippable]
        if fatal or (found and not self.skip_damaged):
            first = (fatal or found)[0]
            more = f" (and {len(found) - 1} more damaged part(s))" if len(found) > 1 else ""
            hint = "" if fatal else ("; pass --skip-bad to replay without the damaged chunks"
                                     if any(d.what == "chunk" for d in found) else "; pass --skip-bad to replay anyway")
            raise BagError(f"bag {self.path}: {first.describe()}{more}{hint}")
        self.damage = found
        for c in self.checks:
            if c.checked == "structure" and not c.damage:
                I.warn_once(f"bag {self.path}: file {c.file} stores no CRCs: only its structure was checked, "
                            "damage inside a chunk cannot be detected")

    def skipped(self, topic: str) -> int:
        """Messages on ``topic`` left out with the damaged chunks (from the bag's index)."""
        return sum(d.count([topic]) for d in self.damage)

    def integrity(self) -> dict[str, Any]:
        """What was checked and found, for ``replay.json``."""
        return {"storage": self.storage, "files": [c.as_dict() for c in self.checks],
                "damaged_chunks": sum(d.what == "chunk" for d in self.damage),
                "undecodable_messages": self.undecodable}

    def close(self) -> None:
        try:
            self._reader.close()
        except Exception:
            pass

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> str:
        return ", ".join(f"{t} ({ty}, {n})" for t, (ty, n) in sorted(self.topics.items())) or "(no topics)"

    def check_topic(self, topic: str, allowed: Sequence[str], what: str = "topic") -> str:
        """The message type of ``topic``; BagError when it is absent or of another type."""
        if topic not in self.topics:
            raise BagError(f"bag {self.path}: {what} {topic!r} not found; topics in the bag: {self.describe()}")
        msgtype = self.topics[topic][0]
        if msgtype not in allowed:
            raise BagError(f"bag {self.path}: {what} {topic!r} has message type {msgtype}, expected "
                           f"{' or '.join(allowed)}")
        return msgtype

    def find(self, msgtypes: Sequence[str]) -> list[str]:
        return sorted(t for t, (ty, _) in self.topics.items() if ty in msgtypes)

    def count(self, topic: str) -> int:
        return self.topics.get(topic, ("", 0))[1]

    def _raw(self, topics: Sequence[str]) -> Iterator[tuple[str, str, int, Any]]:
        """(topic, msgtype, log_time, data): rosbags' reader, or around the damaged MCAP chunks."""
        skip: dict[str, set[int]] = {}
        for d in self.damage:
            if d.what == "chunk":
                skip.setdefault(d.file, set()).add(d.offset)
        if skip:
            for topic, log_time, data in I.iter_mcap_messages(self.files, topics, skip):
                yield topic, self.topics[topic][0], log_time, data
            return
        conns = [c for c in self._reader.connections if c.topic in topics]
        for conn, log_time, data in self._reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, log_time, data

    def messages(self, topics: Sequence[str], raw: bool = False) -> Iterator[tuple[str, int, Any]]:
        """``(topic, log_time_ns, message)`` in log-time order; raw bytes instead of messages if asked.

        A corrupt or truncated file raises BagError naming the bag and the topic being read.
        """
        current = topics[0] if topics else "?"
        try:
            for topic, msgtype, log_time, data in self._raw(topics):
                current = topic
                if raw:
                    yield topic, int(log_time), bytes(data)
                    continue
                try:
                    msg = self._reader.deserialize(data, msgtype)
                except Exception as err:
                    if self.skip_damaged:
                        self.undecodable += 1
                        continue
                    raise BagError(f"bag {self.path}: topic {topic!r}: message at {log_time} ns cannot "
                                   f"be decoded as {msgtype}: {_one_line(err)}") from None
                yield topic, int(log_time), msg
        except BagError:
            raise
        except GeneratorExit:
            raise
        except Exception as err:  # truncated chunk, bad CRC, sqlite "database disk image is malformed"
            raise BagError(f"bag {self.path}: reading topic {current!r} failed (corrupt or truncated "
                           f"file?): {_one_line(err)}") from None


def _storage_files(path: Path, storage: str) -> list[Path]:
    """The bag's storage files in the order of its metadata (rosbags reads them in that order)."""
    import yaml

    try:
        meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        files = [path / Path(str(p)).name for p in meta["relative_file_paths"]]
    except Exception:  # rosbags reports a bad metadata.yaml itself
        files = []
    suffix = {"mcap": ".mcap", "sqlite3": ".db3"}.get(storage)
    if not suffix:
        return files
    return [f for f in files if f.suffix == suffix] or sorted(path.glob(f"*{suffix}"))


def _storage_of(path: Path) -> str:
    if any(path.glob("*.mcap")):
        return "mcap"
    if any(path.glob("*.db3")):
        return "sqlite3"
    return "unknown"


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def decode_image(msg: Any, msgtype: str, max_pixels: int | None = None) -> np.ndarray:
    """RGB (H, W, 3) uint8 of an Image / CompressedImage message (the node's decoder)."""
    from tta_perception.runtime import image_codec as codec

    limit = max_pixels or codec.DEFAULT_MAX_PIXELS
    if msgtype == TYPE_COMPRESSED:
        return codec.compressed_to_rgb(msg.format, np.asarray(msg.data, np.uint8), limit)
    return codec.raw_to_rgb(msg.encoding, msg.height, msg.width, msg.step, np.asarray(msg.data, np.uint8),
                            limit, is_bigendian=bool(msg.is_bigendian))


def decode_labels(msg: Any) -> np.ndarray:
    """(H, W) uint8 class ids of a mono8 label image; ValueError (``ImageError``) otherwise."""
    from tta_perception.runtime.image_codec import raw_to_labels

    return raw_to_labels(msg.encoding, msg.height, msg.width, msg.step, np.asarray(msg.data, np.uint8))


def info(path: str | Path) -> dict[str, Any]:
    """What ``ros2 bag info`` shows, read with rosbags (for tests and the CLI)."""
    with BagReader(path) as reader:
        r = reader._reader
        return {"path": str(reader.path), "storage": reader.storage, "topics": dict(reader.topics),
                "start_ns": int(r.start_time), "end_ns": int(r.end_time),
                "messages": int(r.message_count)}

