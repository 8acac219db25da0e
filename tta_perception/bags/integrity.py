"""Damage in bag files, found before a replay reads them: MCAP CRCs (written and checked), the
structure of MCAP and sqlite3 files, each fault reported with its file and byte offset.

Why this exists: rosbags writes MCAP chunks and the data section with CRC 0 ("not computed") and
checks a chunk CRC only when one is stored, so a bag with flipped bytes or a zeroed stretch used to
replay with status 0, decoding garbage or ending early. So:

- :func:`seal_mcap` fills in the CRCs of a closed MCAP file in place (every chunk's CRC, the data
  section CRC, the summary CRC). ``BagWriter`` seals each file before the bag is renamed into place,
  so every bag this package writes can be checked later. ``ros2 bag record`` writes chunk CRCs too.
- :func:`check_mcap` reads the footer, the summary (its CRC where stored) and every chunk the index
  lists — the record at that offset, its decompression and its CRC where stored, with the ``mcap``
  package — and the data section CRC where stored. A damaged chunk is reported with its offset, its
  log times and the messages per topic it held (from the index, so the count survives the damage);
  :func:`iter_mcap_messages` reads a file while leaving such chunks out (``replay --skip-bad``).
  Damage to the footer or the index cannot be skipped: without them the chunks cannot be found.
- :func:`check_sqlite` runs SQLite's ``PRAGMA quick_check``: a damaged page of the database's
  b-trees is reported with its byte offset. SQLite keeps no checksum of the message blobs, so a
  byte flipped inside an image's data is undetectable in a .db3: the frame decodes with wrong
  pixels. The same holds inside an MCAP chunk stored without a CRC (only its structure is checked).

Cost: one more read of the file, a zlib CRC (C) over it and, per chunk, the record parse of the
``mcap`` package; measured in ``docs/weather_loop.md`` (replay section).

Without the ``mcap`` package MCAP files are neither sealed nor checked; one warning line says so.
"""
from __future__ import annotations

import heapq
import io
import re
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional, Sequence

MAGIC = b"\x89MCAP0\r\n"
_FOOTER = 1 + 8 + 20  # opcode, record length, summary_start, summary_offset_start, summary_crc
_DATA_END = 1 + 8 + 4  # opcode, record length, data_section_crc
_CRC_AT = 9 + 24  # a chunk's uncompressed_crc: after opcode+length and start/end time, uncompressed size
_BLOCK = 1 << 22
MCAP_MISSING = ("the 'mcap' package is not installed, so MCAP CRCs are neither written nor checked "
                "(damage in a bag may go unnoticed): pip install mcap")

_warned: set[str] = set()


def warn_once(text: str) -> None:
    """One warning line on stderr, once per process for the same text."""
    if text not in _warned:
        _warned.add(text)
        print(f"tta-perception: warning: {text}", file=sys.stderr)


def mcap_available() -> bool:
    try:
        _mcap()
    except ImportError:
        return False
    return True


def _mcap():
    """The parts of the ``mcap`` package used here (ImportError when it is not installed)."""
    import mcap  # noqa: F401  (first, so a blocked top-level package blocks the submodules too)
    from mcap import records, stream_reader
    from mcap.data_stream import ReadDataStream
    from mcap.opcode import Opcode
    from mcap.reader import SeekingReader

    return records, stream_reader, ReadDataStream, Opcode, SeekingReader


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@dataclass(frozen=True)
class Damage:
    """One damaged part of a storage file."""

    file: str                      # the storage file's name inside the bag folder
    offset: int                    # byte offset of the damaged record (or page) in that file
    what: str                      # "chunk", "data section", "summary", "footer", "header", "page"
    reason: str
    messages: tuple[tuple[str, int], ...] = ()  # (topic, messages) the chunk held, from the index
    start_ns: int = 0
    end_ns: int = 0
    skippable: bool = False        # a chunk: the rest of the file is still readable without it

    def count(self, topics: Optional[Sequence[str]] = None) -> int:
        return sum(n for t, n in self.messages if topics is None or t in topics)

    def describe(self) -> str:
        """One line: file, what, byte offset, why, and what it held."""
        text = f"file {self.file}: {self.what} at byte offset {self.offset} {self.reason}"
        if self.what == "chunk":
            held = ", ".join(f"{n} {'messages ' if not k else ''}on {t!r}"
                             for k, (t, n) in enumerate(self.messages)) or "no indexed messages"
            text += (f"; it holds {held} (log times {self.start_ns / 1e9:.3f}-{self.end_ns / 1e9:.3f} s)")
        return text


@dataclass
class FileCheck:
    """What :func:`check_mcap` / :func:`check_sqlite` found in one file."""

    file: str
    damage: list[Damage] = field(default_factory=list)
    chunks: int = 0
    chunks_with_crc: int = 0
    data_crc: Optional[bool] = None     # None: not stored; else whether it matched
    summary_crc: Optional[bool] = None
    checked: str = "crc"                # "crc", "structure" (no CRC stored), "sqlite", "none"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "checked": self.checked, "chunks": self.chunks,
                "chunks_with_crc": self.chunks_with_crc, "data_crc": self.data_crc,
                "summary_crc": self.summary_crc, "damage": [d.describe() for d in self.damage]}


class _Fatal(ValueError):
    """Damage after which nothing else in the file can be found (its ends, its index)."""

    def __init__(self, damage: Damage):
        super().__init__(damage.describe())
        self.damage = damage


def _crc_range(f: BinaryIO, start: int, stop: int) -> int:
    f.seek(start)
    crc, left = 0, stop - start
    while left > 0:
        block = f.read(min(_BLOCK, left))
        if not block:
            break
        crc = zlib.crc32(block, crc)
        left -= len(block)
    return crc


@dataclass
class _Layout:
    size: int
    footer_at: int
    summary_start: int
    summary_crc: int
    data_end_at: Optional[int]     # offset of the DataEnd record, None if not where expected
    data_crc: int


def _layout(f: BinaryIO, name: str) -> _Layout:
    """Footer and DataEnd of an MCAP file; _Fatal when the file's ends are not there."""
    records, _, ReadDataStream, Opcode, _ = _mcap()
    f.seek(0, io.SEEK_END)
    size = f.tell()
    f.seek(0)
    if f.read(len(MAGIC)) != MAGIC:
        raise _Fatal(Damage(name, 0, "header", "has no MCAP magic (not an MCAP file, or its start is damaged)"))
    footer_at = size - len(MAGIC) - _FOOTER
    if footer_at < len(MAGIC):
        raise _Fatal(Damage(name, size, "end of file", "comes before any MCAP footer (truncated)"))
    f.seek(footer_at)
    tail = f.read(_FOOTER + len(MAGIC))
    opcode, length = struct.unpack_from("<BQ", tail)
    if tail[-len(MAGIC):] != MAGIC or opcode != Opcode.FOOTER or length != _FOOTER - 9:
        raise _Fatal(Damage(name, size, "end of file", "has no MCAP footer (truncated, or its end is damaged)"))
    footer = records.Footer.read(ReadDataStream(io.BytesIO(tail[9:_FOOTER])))
    if footer.summary_start and not len(MAGIC) < footer.summary_start <= footer_at:
        raise _Fatal(Damage(name, footer_at, "footer", f"points to a summary at byte {footer.summary_start}, "
                                                       "outside the file (damaged)"))
    end_of_data = footer.summary_start or footer_at
    data_end_at, data_crc = end_of_data - _DATA_END, 0
    f.seek(data_end_at)
    rec = f.read(_DATA_END)
    if len(rec) == _DATA_END and rec[0] == Opcode.DATA_END and struct.unpack_from("<Q", rec, 1)[0] == 4:
        data_crc = records.DataEnd.read(ReadDataStream(io.BytesIO(rec[9:]))).data_section_crc
    else:
        data_end_at = None
    return _Layout(size, footer_at, footer.summary_start, footer.summary_crc, data_end_at, data_crc)


def _summary(f: BinaryIO, name: str, lay: _Layout):
    _, _, _, _, SeekingReader = _mcap()
    try:
        f.seek(0)
        summary = SeekingReader(f).get_summary()
    except Exception as err:
        raise _Fatal(Damage(name, lay.summary_start, "summary",
                            f"(the index) cannot be read: {_one_line(err)}")) from None
    if summary is None:
        raise _Fatal(Damage(name, lay.summary_start, "summary", "(the index) is missing"))
    return summary


def _held(summary, ci) -> tuple[tuple[str, int], ...]:
    """(topic, messages) of a chunk from its index entry: each message index record has 15 bytes of
    header and 16 per message, and they follow each other after the chunk."""
    offsets = sorted((off, cid) for cid, off in ci.message_index_offsets.items())
    ends = [off for off, _ in offsets[1:]] + [ci.chunk_start_offset + ci.chunk_length + ci.message_index_length]
    counts: dict[str, int] = {}
    for (off, cid), end in zip(offsets, ends):
        channel = summary.channels.get(cid)
        topic = channel.topic if channel is not None else f"channel {cid}"
        counts[topic] = counts.get(topic, 0) + max(0, (end - off - 15) // 16)
    return tuple(sorted(counts.items()))


def _read_chunk(f: BinaryIO, ci, end_of_data: int) -> tuple[Any, list]:
    """The chunk record at an index entry's offset and its records, CRC-checked where one is stored.
    Raises ValueError (with the reason) for anything that is not the chunk the index describes."""
    records, stream_reader, ReadDataStream, Opcode, _ = _mcap()
    at = ci.chunk_start_offset
    if at < len(MAGIC) or at + ci.chunk_length > end_of_data:
        raise ValueError(f"lies outside the data section (ends at byte {end_of_data}) by the index")
    f.seek(at)
    head = f.read(9)
    if len(head) < 9 or head[0] != Opcode.CHUNK or struct.unpack_from("<Q", head, 1)[0] + 9 != ci.chunk_length:
        raise ValueError("is not the chunk record the index lists (overwritten?)")
    body = f.read(ci.chunk_length - 9)  # bounded by the index, never by a damaged length field
    try:
        chunk = records.Chunk.read(ReadDataStream(io.BytesIO(body)))
        if (len(chunk.data), chunk.uncompressed_size) != (ci.compressed_size, ci.uncompressed_size):
            raise ValueError("has other sizes than the index lists")
        parts = stream_reader.breakup_chunk(chunk, validate_crc=True)
    except stream_reader.CRCValidationError as err:
        raise ValueError(f"fails its CRC check (stored {err.expected:#010x}, computed {err.actual:#010x})") from None
    except ValueError:
        raise
    except Exception as err:  # decompression, a record running past the chunk's end, ...
        raise ValueError(f"cannot be decoded ({_one_line(err)})") from None
    return chunk, parts


def check_mcap(path: str | Path) -> FileCheck:
    """Check one MCAP file (see the module docstring). Needs the ``mcap`` package."""
    records, _, _, _, _ = _mcap()
    path = Path(path)
    report = FileCheck(path.name)
    with open(path, "rb") as f:
        try:
            lay = _layout(f, path.name)
            if lay.summary_start == 0:
                _check_unindexed(f, path.name, report)
                return report
            if lay.summary_crc:
                ok = _crc_range(f, lay.summary_start, lay.footer_at + 9 + 16) == lay.summary_crc
                report.summary_crc = ok
                if not ok:
                    raise _Fatal(Damage(path.name, lay.summary_start, "summary",
                                        "(the index of the chunks) fails its CRC check"))
            summary = _summary(f, path.name, lay)
        except _Fatal as fatal:
            report.damage.append(fatal.damage)
            report.checked = "crc" if report.summary_crc else "structure"
            return report
        end_of_data = lay.data_end_at if lay.data_end_at is not None else lay.summary_start
        for ci in sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset):
            report.chunks += 1
            try:
                chunk, parts = _read_chunk(f, ci, end_of_data)
            except ValueError as err:
                report.damage.append(Damage(path.name, ci.chunk_start_offset, "chunk", str(err), _held(summary, ci),
                                            ci.message_start_time, ci.message_end_time, skippable=True))
                continue
            if chunk.uncompressed_crc:
                report.chunks_with_crc += 1
            else:  # no CRC: at least the messages must belong to known channels and the chunk's times
                for rec in parts:
                    if isinstance(rec, records.Message) and (
                            rec.channel_id not in summary.channels
                            or not ci.message_start_time <= rec.log_time <= ci.message_end_time):
                        report.damage.append(Damage(
                            path.name, ci.chunk_start_offset, "chunk", "holds a message that does not match the "
                            "index (no CRC stored; damaged)", _held(summary, ci), ci.message_start_time,
                            ci.message_end_time, skippable=True))
                        break
        if lay.data_end_at is not None and lay.data_crc:
            ok = _crc_range(f, 0, lay.data_end_at) == lay.data_crc
            report.data_crc = ok
            if not ok and not report.damage:
                report.damage.append(Damage(
                    path.name, 0, "data section", f"(bytes 0-{lay.data_end_at}) fails its CRC check although "
                    "every chunk is intact: the damage is outside the chunks (message indexes or metadata "
                    "records), the messages can still be read", skippable=True))
    report.checked = "crc" if (report.chunks_with_crc == report.chunks or report.data_crc is not None) else "structure"
    return report


def _check_unindexed(f: BinaryIO, name: str, report: FileCheck) -> None:
    """An MCAP file without a summary: read it front to back with CRC checks (rosbags scans it too)."""
    _, stream_reader, _, _, _ = _mcap()

    class Counting:  # unbuffered, so ``pos`` is where the failing record ends
        pos = 0

        def read(self, n: int = -1) -> bytes:
            data = f.read(n)
            self.pos += len(data)
            return data

    f.seek(0)
    src = Counting()
    try:
        for _ in stream_reader.StreamReader(src, validate_crcs=True).records:
            pass
    except Exception as err:
        report.damage.append(Damage(name, src.pos, "record ending", f"cannot be read ({_one_line(err)}); the "
                                    "file has no index, so nothing after it can be found", skippable=False))
    report.checked = "crc"


def seal_mcap(path: str | Path) -> int:
    """Fill in the CRCs a closed MCAP file left at 0: each chunk's, the data section's, the summary's.

    Only fields that are 0 are written, in place (sizes and offsets do not change): chunks first, as the
    data section CRC covers them, then the data section, then the summary. Returns the CRCs written.
    Needs the ``mcap`` package.
    """
    records, stream_reader, ReadDataStream, _, _ = _mcap()
    path = Path(path)
    written = 0
    with open(path, "r+b") as f:
        lay = _layout(f, path.name)
        if lay.summary_start == 0 or lay.data_end_at is None:
            return 0  # not the layout rosbags writes; leave it as it is
        summary = _summary(f, path.name, lay)
        for ci in summary.chunk_indexes:
            f.seek(ci.chunk_start_offset + 9)
            chunk = records.Chunk.read(ReadDataStream(io.BytesIO(f.read(ci.chunk_length - 9))))
            if chunk.uncompressed_crc:
                continue
            data_stream, size = stream_reader.get_chunk_data_stream(chunk)
            f.seek(ci.chunk_start_offset + _CRC_AT)
            f.write(struct.pack("<I", zlib.crc32(data_stream.read(size))))
            written += 1
        if not lay.data_crc:
            crc = _crc_range(f, 0, lay.data_end_at)
            f.seek(lay.data_end_at + 9)
            f.write(struct.pack("<I", crc))
            written += 1
        if not lay.summary_crc:
            crc = _crc_range(f, lay.summary_start, lay.footer_at + 9 + 16)
            f.seek(lay.footer_at + 9 + 16)
            f.write(struct.pack("<I", crc))
            written += 1
        f.flush()
    return written


def iter_mcap_messages(files: Sequence[Path], topics: Sequence[str], skip: dict[str, set[int]],
                       ) -> Iterator[tuple[str, int, bytes]]:
    """``(topic, log_time, data)`` of ``files`` in rosbags' order (file by file, log time, chunk
    offset, position in the chunk), leaving out the chunks at the offsets in ``skip[file name]``.

    Chunks are read lazily, when the merge reaches their first log time, as rosbags does.
    """
    records = _mcap()[0]
    wanted = set(topics)
    for path in files:
        with open(path, "rb") as f:
            lay = _layout(f, path.name)
            summary = _summary(f, path.name, lay)
            end_of_data = lay.data_end_at if lay.data_end_at is not None else lay.summary_start
            channels = {cid: ch.topic for cid, ch in summary.channels.items() if ch.topic in wanted}
            heap: list[tuple] = []
            for ci in summary.chunk_indexes:
                if ci.chunk_start_offset in skip.get(path.name, ()):
                    continue
                if ci.message_index_offsets and not channels.keys() & ci.message_index_offsets.keys():
                    continue
                heap.append((ci.message_start_time, ci.chunk_start_offset, -1, ci))
            heapq.heapify(heap)
            while heap:
                log_time, offset, k, item = heapq.heappop(heap)
                if k >= 0:
                    yield item[0], log_time, item[1]
                    continue
                try:
                    _, parts = _read_chunk(f, item, end_of_data)
                except ValueError as err:  # damaged since the check: stop, naming it
                    raise ValueError(Damage(path.name, offset, "chunk", str(err), _held(summary, item),
                                            item.message_start_time, item.message_end_time).describe()) from None
                msgs = [m for m in parts if isinstance(m, records.Message) and m.channel_id in channels]
                msgs.sort(key=lambda m: m.log_time)  # stable: equal times keep the file's order
                for j, m in enumerate(msgs):
                    heapq.heappush(heap, (m.log_time, offset, j, (channels[m.channel_id], m.data)))


# --------------------------------------------------------------------------------------- sqlite3
_PAGE_RE = re.compile(r"\bpage (\d+)", re.IGNORECASE)


def check_sqlite(path: str | Path) -> FileCheck:
    """``PRAGMA quick_check`` of a .db3, read-only; damage with the byte offset of its first page."""
    import sqlite3

    path = Path(path)
    report = FileCheck(path.name, checked="sqlite")
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        report.damage.append(Damage(path.name, 0, "header", "is not an SQLite database header (damaged or "
                                                            "not a .db3)"))
        return report
    page_size = struct.unpack_from(">H", header, 16)[0]
    page_size = 65536 if page_size == 1 else page_size
    pages = struct.unpack_from(">I", header, 28)[0]
    if page_size and pages and size < pages * page_size:
        report.damage.append(Damage(path.name, size, "end of file", f"comes before the {pages} pages of "
                                    f"{page_size} bytes the header lists (truncated)"))
        return report
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        report.checked = "none"  # cannot even be opened here: rosbags will say why
        return report
    try:
        rows = con.execute("PRAGMA quick_check(1)").fetchall()
    except sqlite3.DatabaseError as err:
        if isinstance(err, sqlite3.OperationalError) and "malformed" not in str(err):
            report.checked = "none"  # locked, a journal it cannot replay read-only, ...: not damage
            return report
        report.damage.append(Damage(path.name, 0, "database", f"cannot be read ({_one_line(err)})"))
        return report
    finally:
        con.close()
    problem = " ".join(str(rows[0][0]).replace("*** in database main ***", " ").split()) if rows else "ok"
    if problem != "ok":
        m = _PAGE_RE.search(problem)
        offset = (int(m.group(1)) - 1) * page_size if m else 0
        what = f"page {m.group(1)}" if m else "database"
        report.damage.append(Damage(path.name, offset, what, f"is damaged (sqlite quick_check: {problem})"))
    return report
