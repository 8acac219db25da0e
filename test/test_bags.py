"""Bags without ROS: make-bag writes real MCAP / sqlite3 bags, replay reads them (and a committed bag
we did not just write), runs the node's pipeline and writes a new bag with the same stamps; bad bags
and existing outputs give clear errors and leave nothing half-written behind."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rosbags")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_ros_helpers as H  # noqa: E402

from tta_perception.bags import io as B  # noqa: E402
from tta_perception.bags.make import BagTopics, make_bag  # noqa: E402
from tta_perception.bags.replay import ReplayOptions, replay  # noqa: E402
from tta_perception.runtime import image_codec as codec  # noqa: E402
from tta_perception.runtime.params import node_config  # noqa: E402
from tta_perception.cli.main import main as cli  # noqa: E402
from tta_perception.world.sequences import SequenceRenderer  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
COMMITTED = DATA / "night_mini_sqlite3"
SIZE = (32, 64)
START = 1_700_000_000.0
# the tiny test model, adapting every 2 frames on a window of 4 (adaptation really runs in a short bag)
CFG = dict(model=H.arch("tiny_seg"), architecture=H.arch("tiny_seg"), allow_code_architecture=True, method="tent", device="cpu",
           input_size=[32, 64], window=4, adapt_every=2)


@pytest.fixture(scope="module")
def night_bag(tmp_path_factory):
    """20 night frames of day2night, bgra8 as the CARLA bridge sends, MCAP (the default)."""
    path = tmp_path_factory.mktemp("bags") / "night"
    info = make_bag("day2night", path, frames=20, start_frame=900, size=SIZE, encoding="bgra8", progress=False)
    assert info["frames"] == 20
    return path


def _messages(path, topic):
    with B.BagReader(path) as r:
        return [(t, log, msg) for t, log, msg in r.messages([topic])]


def _no_partials(path: Path):
    return not list(path.parent.glob(f".{path.name}.partial-*"))


# ------------------------------------------------------------------------------------------ make-bag
def test_make_bag_writes_frames_truth_and_weather_with_schedule_stamps(night_bag):
    info = B.info(night_bag)
    assert info["storage"] == "mcap"
    assert info["topics"] == {"/camera/image_raw": (B.TYPE_IMAGE, 20),
                              "/camera/ground_truth/class_ids": (B.TYPE_IMAGE, 20),
                              "/weather": (B.TYPE_STRING, 20)}
    sr = SequenceRenderer("day2night", size=SIZE)
    images = _messages(night_bag, "/camera/image_raw")
    truth = _messages(night_bag, "/camera/ground_truth/class_ids")
    weather = _messages(night_bag, "/weather")
    for k, ((_, log, img), (_, _, gt), (_, _, w)) in enumerate(zip(images, truth, weather)):
        f = sr.frame(900 + k)
        stamp = int(round((START + f.time) * 1e9))
        assert B.stamp_ns_of(img) == B.stamp_ns_of(gt) == log == stamp
        assert img.encoding == "bgra8" and img.step == SIZE[1] * 4 and img.header.frame_id == "camera"
        assert np.array_equal(B.decode_image(img, B.TYPE_IMAGE), f.rgb)
        assert np.array_equal(B.decode_labels(gt), f.labels)
        payload = yaml.safe_load(w.data)
        assert payload["frame"] == 900 + k and payload["domain"] == f.domain == "night"
        assert payload["stamp"] == {"sec": stamp // 10**9, "nanosec": stamp % 10**9}


def test_metadata_version_8_keeps_qos_as_a_string_for_humble(night_bag, tmp_path):
    meta = yaml.safe_load((night_bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8 and meta["storage_identifier"] == "mcap"
    qos = meta["topics_with_message_count"][0]["topic_metadata"]["offered_qos_profiles"]
    assert isinstance(qos, str) and "reliability: 1" in qos  # Humble's parser reads the string form
    v9 = tmp_path / "v9"
    make_bag("clear", v9, frames=2, size=SIZE, version=9, storage="sqlite3", progress=False)
    meta9 = yaml.safe_load((v9 / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta9["version"] == 9 and meta9["storage_identifier"] == "sqlite3"
    assert isinstance(meta9["topics_with_message_count"][0]["topic_metadata"]["offered_qos_profiles"], list)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "png", "jpeg"])
def test_every_encoding_round_trips(tmp_path, encoding):
    path = tmp_path / encoding
    info = make_bag("clear2rain", path, frames=2, start_frame=700, size=SIZE, encoding=encoding,
                    storage="sqlite3" if encoding in ("rgba8", "png") else "mcap", progress=False)
    rgb = SequenceRenderer("clear2rain", size=SIZE).frame(700).rgb
    topic = info["image_topic"]
    assert topic == ("/camera/image_raw/compressed" if encoding in ("png", "jpeg") else "/camera/image_raw")
    (_, _, msg) = _messages(path, topic)[0]
    msgtype = B.TYPE_COMPRESSED if encoding in ("png", "jpeg") else B.TYPE_IMAGE
    out = B.decode_image(msg, msgtype)
    if encoding == "mono8":
        assert np.array_equal(out[..., 0], codec.to_grey(rgb)) and np.array_equal(out[..., 0], out[..., 2])
    elif encoding == "jpeg":
        assert np.abs(out.astype(int) - rgb).mean() < 12  # lossy
    else:
        assert np.array_equal(out, rgb)


def test_make_bag_refuses_an_existing_output_and_overwrites_only_when_asked(tmp_path):
    path = tmp_path / "bag"
    make_bag("clear", path, frames=2, size=SIZE, progress=False)
    before = sorted(p.name for p in path.iterdir())
    with pytest.raises(B.BagError, match="exists already; pass --overwrite"):
        make_bag("clear", path, frames=3, size=SIZE, progress=False)
    assert sorted(p.name for p in path.iterdir()) == before and _no_partials(path)
    make_bag("clear", path, frames=3, size=SIZE, progress=False, overwrite=True)
    assert B.info(path)["topics"]["/camera/image_raw"][1] == 3 and _no_partials(path)


def test_committed_bag_is_readable():
    """A bag written by an earlier run (sqlite3, bgra8, night) that this test session did not make."""
    info = B.info(COMMITTED)
    assert info["storage"] == "sqlite3"
    assert info["topics"]["/camera/image_raw"] == (B.TYPE_IMAGE, 10)
    (_, _, msg) = _messages(COMMITTED, "/camera/image_raw")[0]
    assert (msg.encoding, msg.height, msg.width) == ("bgra8", 48, 96)
    assert B.decode_image(msg, B.TYPE_IMAGE).shape == (48, 96, 3)


# -------------------------------------------------------------------------------------------- replay
def _replay(bag, out, **opts):
    opts.setdefault("progress", False)
    opts.setdefault("plot", False)
    return replay(bag, out, node_config(CFG), ReplayOptions(**opts))


def test_replay_round_trip_every_frame_has_outputs_with_its_stamp(night_bag, tmp_path):
    out = tmp_path / "out"
    res = _replay(night_bag, out, overlay=True, plot=True)
    in_stamps = [B.stamp_ns_of(m) for _, _, m in _messages(night_bag, "/camera/image_raw")]
    assert res.frames == 20 and res.stamps == in_stamps
    info = B.info(out)
    assert info["storage"] == "mcap"
    for name in ("class_ids", "confidence", "overlay"):
        msgs = _messages(out, f"/tta/{name}")
        assert [B.stamp_ns_of(m) for _, _, m in msgs] == in_stamps
        assert [log for _, log, _ in msgs] == in_stamps  # log time = the input's
        assert all(m.header.frame_id == "camera" and (m.height, m.width) == SIZE for _, _, m in msgs)
    ids = B.decode_labels(_messages(out, "/tta/class_ids")[0][2])
    assert ids.max() < 3  # the tiny model's classes
    # ground truth and weather are copied, so the output bag can be evaluated on its own
    assert info["topics"]["/camera/ground_truth/class_ids"][1] == 20
    summary = yaml.safe_load((out / "replay_summary.json").read_text())
    assert summary["table"]["tent"]["night"]["frames"] == 20
    replay_info = yaml.safe_load((out / "replay.json").read_text())
    assert replay_info["frames"] == 20 and replay_info["adapter"]["adapt_steps"] >= 5
    assert "guard" not in replay_info and res.guard == {}  # the collapse guard is off by default
    assert (out / "replay_plot.png").stat().st_size > 1000 and (out / "replay_frames.csv").is_file()
    assert _no_partials(out)
    _check_quality(out, in_stamps, summary)


def _check_quality(out, in_stamps, summary):
    """The node's 'quality' (on by default) in the output bag: one DiagnosticArray per output frame under
    that frame's header, as tta_node publishes it; replay.json's mean and levels of exactly those messages,
    and (with ground truth) its validation, the one of replay_summary.json and replay_frames.csv."""
    import csv

    from tta_perception.runtime.quality import LEVELS

    assert B.info(out)["topics"]["/tta/quality"] == (B.TYPE_DIAGNOSTICS, len(in_stamps))
    msgs = _messages(out, "/tta/quality")
    assert [B.stamp_ns_of(m) for _, _, m in msgs] == in_stamps and [log for _, log, _ in msgs] == in_stamps
    estimates, levels = [], []
    for _, _, m in msgs:
        assert m.header.frame_id == "camera" and len(m.status) == 1
        st, v = m.status[0], B.diagnostic_values(m)
        assert st.name == "/tta_node: camera quality" and st.hardware_id == "camera"
        assert list(v)[:5] == ["estimate", "level", "calibrated", "calibration", "reason"]
        assert v["level"] == LEVELS[st.level] and 0.0 <= float(v["estimate"]) <= 1.0
        # the tiny test network has no calibration: the estimate is its mean confidence, marked so
        assert v["calibrated"] == "false" and v["estimate"] == v["conf"] and "uncalibrated" in st.message
        estimates.append(float(v["estimate"]))
        levels.append(v["level"])
    q = yaml.safe_load((out / "replay.json").read_text())["quality"]
    assert q["frames"] == len(in_stamps) and q["levels"] == {k: levels.count(k) for k in LEVELS}
    assert q["mean_estimate"] == pytest.approx(np.mean(estimates), abs=1e-4)
    assert q["calibrated"] is False and "uncalibrated" in q["calibration"]
    assert (q["warn_below"], q["error_below"]) == (0.75, 0.5)
    v = q["validation"]
    assert v == summary["quality"]["tent"]  # the numbers an evaluator of the output bag reports
    assert v["frames"] == len(in_stamps) and v["levels"] == q["levels"]
    assert -1.0 <= v["spearman_accuracy"] <= 1.0 and v["mae_points"] >= 0.0
    with open(out / "replay_frames.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["tent_quality"]) for r in rows] == pytest.approx(estimates, abs=1e-4)
    assert [r["tent_quality_level"] for r in rows] == levels


def test_replay_is_repeatable(night_bag, tmp_path):
    a = _replay(night_bag, tmp_path / "a", limit=8)
    b = _replay(night_bag, tmp_path / "b", limit=8)
    assert a.frames == b.frames == 8
    ids_a = [B.decode_labels(m) for _, _, m in _messages(tmp_path / "a", "/tta/class_ids")]
    ids_b = [B.decode_labels(m) for _, _, m in _messages(tmp_path / "b", "/tta/class_ids")]
    assert all(np.array_equal(x, y) for x, y in zip(ids_a, ids_b))
    assert a.table["tent"]["all"]["miou"] == pytest.approx(b.table["tent"]["all"]["miou"])
    from tta_perception.metrics import plot_frame_csvs

    png = plot_frame_csvs(tmp_path / "cmp.png", {"a": tmp_path / "a" / "replay_frames.csv",
                                                 "b": tmp_path / "b" / "replay_frames.csv"}, title="a vs b")
    assert png.stat().st_size > 1000


def test_replay_compressed_images_into_sqlite3(tmp_path):
    bag = tmp_path / "jpeg"
    make_bag("clear2fog", bag, frames=6, start_frame=1000, size=SIZE, encoding="jpeg", progress=False)
    out = tmp_path / "out"
    res = _replay(bag, out, storage="sqlite3")
    assert res.frames == 6
    assert B.info(out)["storage"] == "sqlite3"
    stamps = [B.stamp_ns_of(m) for _, _, m in _messages(out, "/tta/class_ids")]
    assert stamps == [B.stamp_ns_of(m) for _, _, m in _messages(bag, "/camera/image_raw/compressed")]


def test_replay_of_the_committed_bag(tmp_path):
    out = tmp_path / "out"
    res = _replay(COMMITTED, out)
    assert res.frames == 10
    assert [B.stamp_ns_of(m) for _, _, m in _messages(out, "/tta/class_ids")] == \
        [B.stamp_ns_of(m) for _, _, m in _messages(COMMITTED, "/camera/image_raw")]
    assert set(res.table["tent"]) == {"night", "all"}


def test_replay_without_ground_truth_writes_outputs_only(tmp_path):
    bag = tmp_path / "plain"
    make_bag("clear", bag, frames=3, size=SIZE, topics=BagTopics(truth=None, weather=None), progress=False)
    res = _replay(bag, tmp_path / "out")
    assert res.frames == 3 and res.table == {}
    assert set(B.info(tmp_path / "out")["topics"]) == {"/tta/class_ids", "/tta/confidence", "/tta/quality"}
    q = yaml.safe_load((tmp_path / "out" / "replay.json").read_text())["quality"]
    assert q["frames"] == 3 and "validation" not in q  # nothing to validate against
    # quality:=false: no quality topic, no quality block
    off = replay(bag, tmp_path / "off", node_config({**CFG, "quality": False}), ReplayOptions(progress=False))
    assert off.quality == {} and set(B.info(tmp_path / "off")["topics"]) == {"/tta/class_ids", "/tta/confidence"}
    assert "quality" not in yaml.safe_load((tmp_path / "off" / "replay.json").read_text())


# ------------------------------------------------------------------------------------ bad input
def test_existing_output_is_refused_and_left_intact(night_bag, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(B.BagError, match="exists already; pass --overwrite"):
        _replay(night_bag, out)
    assert (out / "precious.txt").read_text() == "keep me" and _no_partials(out)
    with pytest.raises(B.BagError, match="overwrite or nest inside the input"):
        _replay(night_bag, night_bag, overwrite=True)
    # --overwrite replaces bags only, never a folder that is not one
    with pytest.raises(B.BagError, match="is not a bag .* refusing to replace it, even with --overwrite"):
        _replay(night_bag, out, overwrite=True, limit=3)
    assert (out / "precious.txt").read_text() == "keep me" and _no_partials(out)
    (out / "precious.txt").unlink()
    first = _replay(night_bag, out, overwrite=True, limit=3)  # an empty folder may be used
    res = _replay(night_bag, out, overwrite=True, limit=5)  # and a bag replaced
    assert (first.frames, res.frames) == (3, 5) and _no_partials(out)
    assert B.info(out)["topics"]["/tta/class_ids"][1] == 5


def test_missing_topic_and_wrong_message_type_name_the_bag_and_topic(night_bag, tmp_path):
    with pytest.raises(B.BagError) as err:
        _replay(night_bag, tmp_path / "o1", topic="/front/image")
    assert str(night_bag) in str(err.value) and "'/front/image' not found" in str(err.value)
    assert "/camera/image_raw" in str(err.value)  # lists what the bag has
    with pytest.raises(B.BagError, match=r"'/weather' has message type std_msgs/msg/String"):
        _replay(night_bag, tmp_path / "o2", topic="/weather")
    with pytest.raises(B.BagError, match="ground-truth topic '/nope' not found"):
        _replay(night_bag, tmp_path / "o3", truth_topic="/nope")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def _bad_encoding_bag(path: Path, encoding="16SC1", good_first=2):  # 2 bytes/pixel, not a camera image
    rgb = np.zeros((*SIZE, 3), np.uint8)
    with B.BagWriter(path) as w:
        w.add_topic("/camera/image_raw", B.TYPE_IMAGE)
        for k in range(good_first + 1):
            stamp = 10**18 + k * 10**8
            if k < good_first:
                msg = B.rgb_image_message(stamp, "camera", rgb, "rgb8")
            else:
                msg = B.image_message(stamp, "camera", encoding, SIZE[0], SIZE[1], SIZE[1] * 2,
                                      np.zeros(SIZE[0] * SIZE[1] * 2, np.uint8))
            w.write("/camera/image_raw", stamp, msg)


def test_wrong_encoding_stops_with_a_clear_error_and_writes_nothing(tmp_path):
    bag = tmp_path / "signed16"
    _bad_encoding_bag(bag)
    out = tmp_path / "out"
    with pytest.raises(B.BagError) as err:
        _replay(bag, out)
    text = str(err.value)
    assert str(bag) in text and "'/camera/image_raw'" in text and "16SC1" in text and "bad_encoding" in text
    assert not out.exists() and _no_partials(out)
    res = _replay(bag, out, skip_bad=True)  # or skip such frames, counted
    assert (res.frames, res.bad_frames) == (2, 1)


def test_truncated_and_corrupt_bags_give_clear_errors_and_no_output(night_bag, tmp_path):
    truncated = tmp_path / "truncated"
    shutil.copytree(night_bag, truncated)
    mcap = next(truncated.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    out = tmp_path / "out"
    with pytest.raises(B.BagError) as err:
        _replay(truncated, out)
    assert str(truncated) in str(err.value)
    assert not out.exists() and _no_partials(out)

    damaged = tmp_path / "damaged"  # footer and index intact, a chunk in the middle overwritten
    shutil.copytree(night_bag, damaged)
    mcap = next(damaged.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    third = len(data) // 3
    data[third:third + 5000] = bytes((b * 7 + 13) % 256 for b in data[third:third + 5000])
    mcap.write_bytes(bytes(data))
    with pytest.raises(B.BagError) as err:
        _replay(damaged, out)
    assert str(damaged) in str(err.value) and "'/camera/image_raw'" in str(err.value)
    assert not out.exists() and _no_partials(out)

    garbage = tmp_path / "garbage"
    shutil.copytree(COMMITTED, garbage)
    db = next(garbage.glob("*.db3"))
    db.write_bytes(np.random.default_rng(0).integers(0, 256, db.stat().st_size, dtype=np.uint8).tobytes())
    with pytest.raises(B.BagError, match=str(garbage)):
        _replay(garbage, out)
    assert not out.exists()

    no_meta = tmp_path / "no_meta"
    shutil.copytree(night_bag, no_meta)
    (no_meta / "metadata.yaml").unlink()
    with pytest.raises(B.BagError, match="no metadata.yaml"):
        _replay(no_meta, out)
    with pytest.raises(B.BagError, match="does not exist"):
        _replay(tmp_path / "nowhere", out)


def test_a_failure_half_way_leaves_nothing_that_looks_complete(night_bag, tmp_path):
    from tta_perception.runtime.pipeline import make_pipeline

    pipe = make_pipeline(node_config(CFG))
    calls = {"n": 0}
    real = pipe.infer

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    pipe.infer = failing
    out = tmp_path / "out"
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            replay(night_bag, out, node_config(CFG), ReplayOptions(progress=False), pipeline=pipe)
    finally:
        pipe.close()
    assert not out.exists() and _no_partials(out)


def test_an_interrupted_replay_resumes_to_the_same_output(night_bag, tmp_path):
    import torch

    from tta_perception.bags.replay import ReplayInterrupted, resume_dir_of
    from tta_perception.runtime.pipeline import make_pipeline

    full = _replay(night_bag, tmp_path / "full")  # no checkpoints
    pipe = make_pipeline(node_config(CFG))
    calls = {"n": 0}
    real = pipe.infer

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    pipe.infer = interrupted
    out = tmp_path / "out"
    opts = dict(progress=False, plot=False, checkpoint_every=5)
    try:
        with pytest.raises(ReplayInterrupted, match="--resume"):
            replay(night_bag, out, node_config(CFG), ReplayOptions(**opts), pipeline=pipe)
    finally:
        pipe.close()
    rdir = resume_dir_of(out)
    assert not out.exists() and _no_partials(out)
    ckpt = torch.load(rdir / "checkpoint.pt", weights_only=True)
    assert ckpt["progress"]["frames"] == 10 and ckpt["parts"] == ["part_0000", "part_0001"]
    # without --resume the leftovers are never overwritten silently
    with pytest.raises(B.BagError, match="--resume to continue it, or --overwrite"):
        replay(night_bag, out, node_config(CFG), ReplayOptions(**opts))
    with pytest.raises(B.BagError, match="other settings.*cfg"):
        replay(night_bag, out, node_config({**CFG, "adapt_every": 3}), ReplayOptions(**opts, resume=True))
    res = replay(night_bag, out, node_config(CFG), ReplayOptions(**opts, resume=True))
    assert res.frames == 20 and res.stamps == full.stamps and not rdir.exists() and _no_partials(out)
    for topic in ("/tta/class_ids", "/tta/confidence", "/camera/ground_truth/class_ids", "/weather"):
        a, b = _messages(tmp_path / "full", topic), _messages(out, topic)
        assert [log for _, log, _ in a] == [log for _, log, _ in b], topic
        if topic.endswith(("class_ids", "confidence")):  # bit-identical: the state was restored exactly
            assert all(np.array_equal(B.decode_labels(x), B.decode_labels(y)) for (_, _, x), (_, _, y) in zip(a, b))
    assert res.table["tent"]["all"] == pytest.approx(full.table["tent"]["all"])
    info = yaml.safe_load((out / "replay.json").read_text())
    assert info["resumed_from_frame"] == 10 and info["adapter"]["adapt_steps"] == full_steps(tmp_path / "full")
    # a damaged checkpoint is named, not loaded
    shutil.rmtree(out)
    rdir.mkdir()
    (rdir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(B.BagError, match="cannot be read.*--overwrite"):
        replay(night_bag, out, node_config(CFG), ReplayOptions(**opts, resume=True))


def test_guard_on_a_replay_reports_its_counters_and_resumes_to_the_same_run(night_bag, tmp_path):
    """``guard``: the collapse guard runs in the replay as in the node and replay.json carries its counters.
    Made strict (every 3rd frame checked, agreement of 90 % required, the source model always a
    reference) so that it recovers in 12 frames; an interrupted run resumed from its checkpoint has the
    guard's checks, counters and stored states back, so it equals the uninterrupted one."""
    from tta_perception.bags.replay import ReplayInterrupted
    from tta_perception.runtime.pipeline import make_pipeline

    cfg = node_config({**CFG, "guard": True, "guard_check_every": 3, "guard_window": 2,
                       "guard_min_agreement": 0.9, "guard_source_reliable": 0.0})
    opts = dict(progress=False, plot=False, limit=12, checkpoint_every=4)
    full = replay(night_bag, tmp_path / "full", cfg, ReplayOptions(**opts))
    g = yaml.safe_load((tmp_path / "full" / "replay.json").read_text())["guard"]
    assert g == full.guard
    assert set(g) >= {"guard_checks", "guard_bad_checks", "guard_recoveries", "guard_to_source",
                      "guard_blind_frames", "guard_nonfinite", "guard_last_reason"}
    assert g["guard_checks"] == 12 // 3 and g["guard_recoveries"] >= 1 and g["guard_blind_frames"] == 0
    assert g["guard_last_reason"].startswith("collapse over the last 2 checks")
    pipe = make_pipeline(cfg)
    calls, real = {"n": 0}, pipe.infer

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    pipe.infer = interrupted
    try:
        with pytest.raises(ReplayInterrupted):
            replay(night_bag, tmp_path / "out", cfg, ReplayOptions(**opts), pipeline=pipe)
    finally:
        pipe.close()
    res = replay(night_bag, tmp_path / "out", cfg, ReplayOptions(**opts, resume=True))
    assert res.guard == full.guard and res.quality == full.quality
    for topic in ("/tta/class_ids", "/tta/quality"):
        a, b = _messages(tmp_path / "full", topic), _messages(tmp_path / "out", topic)
        assert len(a) == len(b) == 12
        if topic == "/tta/class_ids":
            assert all(np.array_equal(B.decode_labels(x), B.decode_labels(y)) for (_, _, x), (_, _, y) in zip(a, b))
        else:
            assert [B.diagnostic_values(x) for _, _, x in a] == [B.diagnostic_values(y) for _, _, y in b]


def full_steps(path):
    return yaml.safe_load((path / "replay.json").read_text())["adapter"]["adapt_steps"]


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_make_bag_and_replay(tmp_path, capsys):
    bag, out = tmp_path / "bag", tmp_path / "out"
    assert cli(["make-bag", "--sequence", "clear2fog", "--out", str(bag), "--frames", "4", "--size", "32x64",
                "--start-frame", "1100", "--encoding", "rgb8", "--no-progress"]) == 0
    assert "4 frames" in capsys.readouterr().out
    args = ["replay", str(bag), "--out", str(out), "--model", H.arch("tiny_seg"), "--architecture",
            H.arch("tiny_seg"), "--method", "tent", "--device", "cpu", "--no-progress", "--no-plot"]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "replayed 4 frames" in printed and "fog" in printed and "frames/s" in printed
    assert cli(args) == 2  # exists: refused with one line, no traceback
    assert "exists already; pass --overwrite" in capsys.readouterr().err
    assert cli(args + ["--overwrite"]) == 0
    assert cli(["replay", str(bag), "--out", str(tmp_path / "o2"), "--topic", "/x", "--model",
                H.arch("tiny_seg"), "--architecture", H.arch("tiny_seg"), "--no-progress"]) == 2
    assert "'/x' not found" in capsys.readouterr().err


def test_cli_replay_quality_and_guard_options(night_bag, tmp_path, capsys):
    """``--guard`` / ``--no-quality`` / ``--quality-calibration`` set the node's parameters of the same
    names over the parameter file; the replay prints the estimate (validated against the bag's ground
    truth) and the guard's counters, and --no-quality leaves the quality topic out."""
    params = tmp_path / "p.yaml"  # a strict guard (as in the guard test above), from the node's parameter file
    params.write_text("/**/tta_node:\n  ros__parameters:\n    guard: false\n    guard_check_every: 3\n"
                      "    guard_window: 2\n    guard_min_agreement: 0.9\n    guard_source_reliable: 0.0\n")
    base = ["replay", str(night_bag), "--model", H.arch("tiny_seg"), "--architecture", H.arch("tiny_seg"),
            "--method", "tent", "--device", "cpu", "--window", "4", "--adapt-every", "2", "--limit", "12",
            "--no-progress", "--no-plot", "--params-file", str(params)]
    assert cli(base + ["--out", str(tmp_path / "g"), "--guard", "--quality-source-every", "3"]) == 0
    printed = capsys.readouterr().out
    g = yaml.safe_load((tmp_path / "g" / "replay.json").read_text())["guard"]
    assert g["guard_checks"] == 4 and g["guard_recoveries"] >= 1
    # every 3rd frame is judged against the source model (the guard's checks reuse that pass)
    values = [B.diagnostic_values(m) for _, _, m in _messages(tmp_path / "g", "/tta/quality")]
    assert [v["gain"] != "nan" for v in values] == [i % 3 == 2 for i in range(12)]
    for v in values[2::3]:
        assert float(v["gain"]) == pytest.approx(float(v["estimate"]) - float(v["source_estimate"]), abs=2e-4)
    assert f"collapse guard: 4 checks, {g['guard_bad_checks']} bad, {g['guard_recoveries']} recoveries" in printed
    assert "quality estimate: mean" in printed and "against the ground truth: Spearman" in printed
    assert cli(base + ["--out", str(tmp_path / "q"), "--no-quality"]) == 0
    printed = capsys.readouterr().out
    assert "quality estimate" not in printed and "collapse guard" not in printed  # the file's guard: false
    assert "/tta/quality" not in B.info(tmp_path / "q")["topics"]
    assert cli(base + ["--out", str(tmp_path / "c"), "--quality-calibration", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_params_file_sets_the_node_configuration(tmp_path):
    from tta_perception.runtime.params import load_params_file

    adapt = load_params_file(H.REPO / "config" / "adapt.yaml")
    assert adapt["method"] == "dplot" and adapt["window"] == 4
    path = tmp_path / "p.yaml"
    path.write_text("/**/tta_node:\n  ros__parameters:\n    method: tent\n    window: 8\n    lr: 1\n")
    cfg = node_config({"window": 4}, path)
    assert (cfg["method"], cfg["window"], cfg["lr"]) == ("tent", 4, 1.0)
    path.write_text("/**/tta_node:\n  ros__parameters:\n    methd: tent\n")
    with pytest.raises(ValueError, match="unknown node parameter"):
        node_config({}, path)
    with pytest.raises(ValueError, match="parameter 'window' must be in"):
        node_config({"window": 0})


def test_phase_table_keeps_columns_apart_for_many_methods():
    from tta_perception.metrics import format_table

    row = {"miou": 34.6, "acc": 50.0, "frames": 457}
    table = {m: {"night": row, "all": row} for m in ("source", "norm", "dplot")}
    lines = format_table(table).splitlines()
    assert lines[0].split() == ["phase", "source", "norm", "dplot", "frames"]
    assert lines[-1].split() == ["all", "34.6", "34.6", "34.6", "457/457/457"]
