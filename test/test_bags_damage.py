"""Damaged bags, failed replays and bad parameter files: real bags written by the project's own writer,
then damaged on disk (bytes flipped inside a chunk, 50 KB zeroed, truncated, a sqlite page broken).
Without --skip-bad a replay stops with one line naming the bag, file and byte offset and writes
nothing; with it the damaged chunks are left out and counted; an intact bag replays as before."""
from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_ros_helpers as H  # noqa: E402

from tta_perception.bags import integrity as I  # noqa: E402
from tta_perception.bags import io as B  # noqa: E402
from tta_perception.bags.make import make_bag  # noqa: E402
from tta_perception.bags.replay import ReplayOptions, replay, resume_dir_of  # noqa: E402
from tta_perception.cli.main import main as cli  # noqa: E402
from tta_perception.runtime.params import load_params_file, node_config  # noqa: E402

needs_mcap = pytest.mark.skipif(not I.mcap_available(),
                                reason="the 'mcap' package is not installed (pip install -e '.[bags]')")
IMAGE = "/camera/image_raw"
FRAMES = 24
# 128x256 frames: rosbags closes a chunk past 1 MiB, so 24 frames make 3 chunks of 8 frames (+ a tail)
SIZE = (128, 256)
CFG = dict(model=H.arch("tiny_seg"), architecture=H.arch("tiny_seg"), allow_code_architecture=True, method="tent", device="cpu",
           input_size=[32, 64], window=4, adapt_every=2)
CLI_MODEL = ["--model", H.arch("tiny_seg"), "--architecture", H.arch("tiny_seg"), "--method", "tent",
             "--device", "cpu", "--no-progress", "--no-plot"]


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("damage") / "rain"
    make_bag("day2night", path, frames=FRAMES, start_frame=900, size=SIZE, seed=0, progress=False)
    return path


def _file(path: Path) -> Path:
    return next(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))


def _damaged(src: Path, dst: Path, damage) -> Path:
    shutil.copytree(src, dst)
    f = _file(dst)
    data = bytearray(f.read_bytes())
    damage(data)
    f.write_bytes(bytes(data))
    return dst


def _chunks(path: Path) -> list[dict]:
    """Offset, length and image stamps of each chunk of an intact MCAP bag (read with ``mcap``)."""
    from mcap.data_stream import ReadDataStream
    from mcap.reader import SeekingReader
    from mcap.records import Chunk, Message
    from mcap.stream_reader import breakup_chunk

    with open(_file(path), "rb") as f:
        summary = SeekingReader(f).get_summary()
        image = {cid for cid, ch in summary.channels.items() if ch.topic == IMAGE}
        out = []
        for ci in sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset):
            f.seek(ci.chunk_start_offset + 9)
            chunk = Chunk.read(ReadDataStream(io.BytesIO(f.read(ci.chunk_length - 9))))
            stamps = [r.log_time for r in breakup_chunk(chunk) if isinstance(r, Message) and r.channel_id in image]
            out.append({"offset": ci.chunk_start_offset, "end": ci.chunk_start_offset + ci.chunk_length,
                        "stamps": stamps, "crc": chunk.uncompressed_crc})
    return out


def _stamps(path: Path, topic: str = "/tta/class_ids") -> list[int]:
    with B.BagReader(path) as r:
        return [B.stamp_ns_of(m) for _, _, m in r.messages([topic])]


def _nothing_written(out: Path) -> bool:
    return not out.exists() and not resume_dir_of(out).exists() and \
        not list(out.parent.glob(f".{out.name}.partial-*"))


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _replay(path, out, **opts):
    opts.setdefault("progress", False)
    opts.setdefault("plot", False)
    return replay(path, out, node_config(CFG), ReplayOptions(**opts))


# ------------------------------------------------------------------------------------------ MCAP
@needs_mcap
def test_bags_we_write_carry_crcs_that_the_mcap_package_validates(bag):
    from mcap.stream_reader import StreamReader

    chunks = _chunks(bag)
    assert len(chunks) >= 3 and all(c["crc"] for c in chunks)  # rosbags alone writes 0: not computed
    with open(_file(bag), "rb") as f:  # chunk and data-section CRCs, validated by mcap itself
        assert sum(1 for _ in StreamReader(f, validate_crcs=True).records) > 0
    report = I.check_mcap(_file(bag))
    assert (report.checked, report.chunks, report.chunks_with_crc) == ("crc", len(chunks), len(chunks))
    assert report.data_crc is True and report.summary_crc is True and report.damage == []


@needs_mcap
def test_an_intact_bag_replays_as_before_and_the_skip_path_reads_the_same(bag, tmp_path):
    out = tmp_path / "out"
    res = _replay(bag, out)
    stamps = [s for c in _chunks(bag) for s in c["stamps"]]
    assert len(stamps) == FRAMES and res.frames == FRAMES and res.stamps == stamps
    assert (res.bad_frames, res.bad_chunks, res.skipped_messages, res.damage) == (0, 0, 0, [])
    topics = B.info(out)["topics"]
    assert {t: n for t, (_, n) in topics.items()} == {
        "/tta/class_ids": FRAMES, "/tta/confidence": FRAMES, "/tta/quality": FRAMES,
        "/camera/ground_truth/class_ids": FRAMES, "/weather": FRAMES}
    info = json.loads((out / "replay.json").read_text())
    assert (info["frames"], info["bad_chunks"], info["skipped_messages"]) == (FRAMES, 0, 0)
    assert info["integrity"]["files"][0]["checked"] == "crc"
    assert I.check_mcap(_file(out)).chunks_with_crc >= 1  # the output bag is sealed too
    # the reader that steps around damaged chunks yields what rosbags yields, in the same order
    with B.BagReader(bag) as r:
        expected = [(t, log, bytes(d)) for t, log, d in r.messages(list(r.topics), raw=True)]
        got = [(t, log, bytes(d)) for t, log, d in I.iter_mcap_messages(r.files, list(r.topics), {})]
    assert got == expected and len(got) == 3 * FRAMES


@needs_mcap
def test_flipped_bytes_in_a_chunk_stop_the_replay_or_are_skipped(bag, tmp_path, capsys):
    chunks = _chunks(bag)
    hit = chunks[1]
    middle = (hit["offset"] + hit["end"]) // 2

    def flip(data):
        for i in range(middle, middle + 16):
            data[i] ^= 0xFF

    bad = _damaged(bag, tmp_path / "flipped", flip)
    out = tmp_path / "out"
    args = ["replay", str(bad), "--out", str(out)] + CLI_MODEL
    capsys.readouterr()
    assert cli(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(bad) in line and f"byte offset {hit['offset']}" in line and "CRC" in line
    assert f"{len(hit['stamps'])} messages on" in line and f"'{IMAGE}'" in line and "--skip-bad" in line
    assert _nothing_written(out)

    assert cli(args + ["--skip-bad"]) == 0
    printed = capsys.readouterr()
    kept = [s for c in chunks if c is not hit for s in c["stamps"]]
    assert f"replayed {len(kept)} frames" in printed.out
    assert f"1 damaged chunk(s) skipped ({3 * len(hit['stamps'])} messages, {len(hit['stamps'])} frames)" in printed.out
    assert f"byte offset {hit['offset']}" in printed.err
    assert _stamps(out) == kept
    info = json.loads((out / "replay.json").read_text())
    assert (info["frames"], info["bad_chunks"], info["skipped_frames"]) == (len(kept), 1, len(hit["stamps"]))
    assert info["skipped_messages"] == 3 * len(hit["stamps"]) and len(info["damage"]) == 1
    assert not resume_dir_of(out).exists()


@needs_mcap
def test_a_zeroed_stretch_is_found_and_its_chunks_skipped(bag, tmp_path):
    chunks = _chunks(bag)
    size = _file(bag).stat().st_size
    start = size // 2
    stop = start + min(50_000, size // 3)
    bad = _damaged(bag, tmp_path / "zeroed", lambda d: d.__setitem__(slice(start, stop), bytes(stop - start)))
    hit = [c for c in chunks if c["offset"] < stop and start < c["end"]]
    assert hit
    out = tmp_path / "out"
    with pytest.raises(B.BagError) as err:
        _replay(bad, out)
    text = str(err.value)
    assert str(bad) in text and f"byte offset {hit[0]['offset']}" in text and "\n" not in text
    assert _nothing_written(out)
    res = _replay(bad, out, skip_bad=True)
    kept = [s for c in chunks if c not in hit for s in c["stamps"]]
    assert res.stamps == kept == _stamps(out) and res.bad_chunks == len(hit)
    assert res.skipped_frames == sum(len(c["stamps"]) for c in hit)


@needs_mcap
def test_a_truncated_mcap_names_where_the_file_ends_even_with_skip_bad(bag, tmp_path, capsys):
    size = _file(bag).stat().st_size
    bad = _damaged(bag, tmp_path / "truncated", lambda d: d.__delitem__(slice(size * 2 // 3, None)))
    out = tmp_path / "out"
    for extra in ([], ["--skip-bad"]):  # no footer, no index: nothing can be found to skip to
        capsys.readouterr()
        assert cli(["replay", str(bad), "--out", str(out)] + CLI_MODEL + extra) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert str(bad) in line and f"byte offset {size * 2 // 3}" in line and "no MCAP footer" in line
        assert _nothing_written(out)


@needs_mcap
def test_damage_between_the_chunks_is_caught_by_the_data_section_crc(bag, tmp_path):
    first = _chunks(bag)[0]

    def flip_index(data):  # a byte of the message index that follows the first chunk
        data[first["end"] + 20] ^= 0x01

    bad = _damaged(bag, tmp_path / "index", flip_index)
    with pytest.raises(B.BagError, match=r"data section .* fails its CRC .* --skip-bad to replay anyway"):
        _replay(bad, tmp_path / "out")
    res = _replay(bad, tmp_path / "out", skip_bad=True)  # the messages themselves are intact
    assert res.frames == FRAMES and res.bad_chunks == 0 and len(res.damage) == 1


# ---------------------------------------------------------------------------------------- sqlite3
def test_damaged_sqlite_bags_are_one_line_with_the_page_offset(tmp_path, capsys):
    good = tmp_path / "good"
    make_bag("day2night", good, frames=8, start_frame=900, size=SIZE, seed=0, storage="sqlite3", progress=False)
    size = _file(good).stat().st_size
    page = 4096
    at = (size // page // 2) * page  # a page start: b-tree cells or an overflow page's next pointer

    def flip(data):
        for i in range(at, at + 8):
            data[i] ^= 0xFF

    cases = {"flipped": flip,
             "zeroed": lambda d: d.__setitem__(slice(at, at + 50_000), bytes(len(d[at:at + 50_000]))),
             "truncated": lambda d: d.__delitem__(slice(size * 2 // 3, None))}
    for name, damage in cases.items():
        bad = _damaged(good, tmp_path / name, damage)
        out = tmp_path / f"out_{name}"
        capsys.readouterr()
        assert cli(["replay", str(bad), "--out", str(out)] + CLI_MODEL) == 2, name
        line = _one_error_line(capsys.readouterr().err)
        assert str(bad) in line and "byte offset" in line and f"file {_file(bad).name}" in line, line
        assert _nothing_written(out), name  # no <out>.resume/ left to block the next run


# --------------------------------------------------------------------------------- failed replays
def test_a_replay_that_fails_before_its_first_checkpoint_leaves_nothing(bag, tmp_path):
    from tta_perception.runtime.pipeline import make_pipeline

    def failing_at(n, exc):
        pipe = make_pipeline(node_config(CFG))
        calls = {"n": 0}
        real = pipe.infer

        def infer(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise exc
            return real(*args, **kwargs)

        pipe.infer = infer
        return pipe

    out = tmp_path / "out"
    opts = dict(progress=False, plot=False, checkpoint_every=5, limit=8)
    for exc in (RuntimeError("simulated crash"), KeyboardInterrupt()):
        pipe = failing_at(3, exc)
        try:
            with pytest.raises(type(exc)):
                replay(bag, out, node_config(CFG), ReplayOptions(**opts), pipeline=pipe)
        finally:
            pipe.close()
        assert _nothing_written(out)
    res = replay(bag, out, node_config(CFG), ReplayOptions(**opts))  # the same command, no --overwrite
    assert res.frames == 8 and not resume_dir_of(out).exists()
    # a failure after a checkpoint keeps the resumable state
    later = tmp_path / "later"
    pipe = failing_at(7, RuntimeError("simulated crash"))
    try:
        with pytest.raises(RuntimeError):
            replay(bag, later, node_config(CFG), ReplayOptions(**opts), pipeline=pipe)
    finally:
        pipe.close()
    assert (resume_dir_of(later) / "checkpoint.pt").is_file() and not later.exists()
    res = replay(bag, later, node_config(CFG), ReplayOptions(**opts, resume=True))
    assert res.frames == 8 and not resume_dir_of(later).exists()


def test_the_same_failing_command_fails_the_same_way_again(tmp_path, capsys):
    bag = tmp_path / "bad_encoding"
    rgb = np.zeros((*SIZE, 3), np.uint8)
    with B.BagWriter(bag) as w:
        w.add_topic(IMAGE, B.TYPE_IMAGE)
        for k in range(3):
            stamp = 10**18 + k * 10**8
            msg = B.rgb_image_message(stamp, "camera", rgb, "rgb8") if k < 2 else \
                B.image_message(stamp, "camera", "16SC1", SIZE[0], SIZE[1], SIZE[1] * 2,
                                np.zeros(SIZE[0] * SIZE[1] * 2, np.uint8))  # an encoding no camera sends
            w.write(IMAGE, stamp, msg)
    out = tmp_path / "out"
    args = ["replay", str(bag), "--out", str(out)] + CLI_MODEL  # checkpoints every 100 frames (default)
    for _ in range(2):
        capsys.readouterr()
        assert cli(args) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "16SC1" in line and "--resume" not in line
        assert _nothing_written(out)


# ------------------------------------------------------------------------------ parameter files
def test_binary_or_malformed_parameter_files_are_one_line_naming_the_file(tmp_path, capsys):
    binary = tmp_path / "weights.pt"
    binary.write_bytes(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02}q\x00" + bytes(range(256)))
    malformed = tmp_path / "adapt.yaml"
    malformed.write_text("/**/tta_node:\n  ros__parameters:\n    window: [4, 8\n    method: tent\n")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("/**/tta_node:\n  ros__parameters:\n    window: many\n")
    for path, what in ((binary, "not a text YAML file"), (malformed, "not valid YAML"), (wrong, "'window'")):
        with pytest.raises(ValueError) as err:
            node_config({}, path)
        assert str(path) in str(err.value) and what in str(err.value) and "\n" not in str(err.value)
        capsys.readouterr()
        assert cli(["replay", str(tmp_path / "nobag"), "--out", str(tmp_path / "o"), "--params-file", str(path)]) == 2
        assert str(path) in _one_error_line(capsys.readouterr().err)
    with pytest.raises(ValueError, match="is a directory, not a parameter file"):
        load_params_file(tmp_path)


# ---------------------------------------------------------------------------- without mcap
def test_without_the_mcap_package_bags_replay_with_one_warning(tmp_path, monkeypatch, capsys):
    available = I.mcap_available()
    real = sys.modules.get("mcap")
    monkeypatch.setattr(I, "_warned", set())
    monkeypatch.setitem(sys.modules, "mcap", None)  # import mcap raises ImportError, as when absent
    assert not I.mcap_available()
    bag = tmp_path / "plain"
    make_bag("clear", bag, frames=3, size=(32, 64), progress=False)  # written unsealed
    res = _replay(bag, tmp_path / "out")
    assert res.frames == 3
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "'mcap' package is not installed" in warnings[0]
    if available:
        # an MCAP file without CRCs (as rosbags writes them): its structure is still checked
        monkeypatch.setitem(sys.modules, "mcap", real)
        report = I.check_mcap(_file(bag))
        assert (report.checked, report.chunks_with_crc, report.data_crc, report.damage) == ("structure", 0, None, [])
        with B.BagReader(bag):
            pass
        assert "stores no CRCs" in capsys.readouterr().err
