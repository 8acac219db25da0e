"""What a peer on the DDS domain can do with the files the node's parameters name, and frames lost
before the node, over real DDS with the real rclpy: saves land only in ``state_dir`` and replace only
node states; every file a parameter names is a regular file within its cap and is never opened in a
way that blocks; a start-up parameter changed at run time is checked like the others and never
breaks later reloads; stamp gaps show as ``lost_in_transport``. Storms: ``test_node_storms.py``."""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_ros_helpers as H  # noqa: E402

H.require_rclpy()

import torch  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from test_node_hardening import _serves, _set  # noqa: E402
from test_ros_helpers import harness, ros  # noqa: E402,F401  (fixtures)
from test_ros_node import SEG, Rig  # noqa: E402

from tta_perception import files  # noqa: E402
from tta_perception.runtime.health import StampGaps  # noqa: E402
from tta_perception.runtime.state import is_state_file  # noqa: E402


def _save(ros, rig):
    return ros.call(Trigger, f"{rig.ns}/tta_node/save", Trigger.Request())


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


# ------------------------------------------------------------------------------------------ saves
def test_a_save_never_lands_outside_the_state_dir(ros, tmp_path):
    state_dir, outside = tmp_path / "states", tmp_path / "elsewhere"
    outside.mkdir()
    victim = outside / "notes.txt"
    victim.write_text("x" * 64)
    (state_dir).mkdir()
    (state_dir / "escape").symlink_to(outside)  # a link inside that leads out
    rig = Rig(ros, **dict(SEG, state_dir=str(state_dir)))
    for value in (str(victim), "../elsewhere/notes.txt", "escape/notes.txt", str(outside / "new" / "x.pt"),
                  str(state_dir)):
        result = _set(rig, save_path=value)
        assert not result.successful and "outside the state directory" in result.reason, (value, result.reason)
    assert victim.read_text() == "x" * 64 and not (outside / "new").exists()
    # state_dir itself is fixed at start-up
    result = _set(rig, state_dir=str(outside))
    assert not result.successful and "read-only" in result.reason
    # a plain name and a sub-folder inside it are fine
    assert _set(rig, save_path="run1/adapted.pt").successful
    _serves(rig, 1)
    res = _save(ros, rig)
    assert res.success and res.message == str(state_dir / "run1" / "adapted.pt"), res.message
    assert is_state_file(state_dir / "run1" / "adapted.pt")
    # a node started with a save_path outside its state_dir refuses to configure, saying why
    bad = Rig(ros, **dict(SEG, state_dir=str(state_dir), save_path=str(victim)))
    assert bad.count("state") != "active" and "outside the state directory" in bad.count("config_error")


def test_a_save_replaces_only_a_node_state(ros, tmp_path, fifo):
    state_dir = tmp_path
    text = state_dir / "notes.txt"
    text.write_text("not a state")
    (state_dir / "link.pt").symlink_to(text)
    other_torch = state_dir / "weights.pt"
    torch.save({"w": torch.zeros(3)}, other_torch)
    rig = Rig(ros, **dict(SEG, state_dir=str(state_dir)))
    _serves(rig, 1)
    for name in ("notes.txt", "pipe", "weights.pt"):
        assert _set(rig, save_path=name).successful  # inside state_dir: only the save can tell
        res = _save(ros, rig)
        assert not res.success and "not replaced" in res.message, (name, res.message)
    assert text.read_text() == "not a state" and fifo.is_fifo()
    assert set(torch.load(other_torch, weights_only=True)) == {"w"}
    # a link inside state_dir to a file inside it: resolved to that file, which is no state either
    assert _set(rig, save_path="link.pt").successful
    res = _save(ros, rig)
    assert not res.success and text.read_text() == "not a state"
    assert rig.count("saves_refused") == 4 and rig.count("saves") == 0
    # a node state is replaced (the usual case: saving again)
    assert _set(rig, save_path="state.pt").successful
    assert _save(ros, rig).success and _save(ros, rig).success and rig.count("saves") == 2
    _serves(rig, 2)


# ------------------------------------------------------------------------------- files to read
@pytest.mark.parametrize("name,words", [
    ("domain_calibration", "calibration"), ("bundle", "weights"), ("resume_from", "weights"),
])
def test_special_and_huge_files_are_refused_at_once(ros, tmp_path, fifo, name, words):
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:  # sparse: 3 GB on paper, nothing on disk
        fh.truncate(3 << 30)
    rig = Rig(ros, **SEG)
    _serves(rig, 1)
    for value, what in ((str(fifo), "a FIFO"), ("/dev/zero", "a character device"), (str(tmp_path), "a directory"),
                        (str(big), "over the")):
        t0 = time.monotonic()
        result = _set(rig, **{name: value})
        assert time.monotonic() - t0 < 10, "the answer waited on the file"
        assert not result.successful and what in result.reason and f"'{name}'" in result.reason, result.reason
        assert "\n" not in result.reason
    assert rig.count("reload_failures") == 0 and not rig.count("reloading")
    _serves(rig, 2)


def test_the_reader_never_blocks_on_a_fifo_and_stops_at_the_cap(tmp_path, fifo):
    """The second layer, for a path that changes between the check and the read."""
    done = threading.Event()
    errors = []

    def read():
        try:
            files.read_bytes(fifo, "parameter 'domain_calibration'", "calibration")
        except files.FileProblem as err:
            errors.append(str(err))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(10), "open blocked on a FIFO"
    assert "is a FIFO (named pipe), not a calibration file" in errors[0]
    with pytest.raises(files.FileProblem, match="character device"):
        files.open_regular("/dev/zero", "parameter 'model'")
    with pytest.raises(files.FileProblem, match="is a directory"):
        files.open_regular(tmp_path, "parameter 'model'")
    with pytest.raises(FileNotFoundError):
        files.open_regular(tmp_path / "missing.pt", "parameter 'model'")
    big = tmp_path / "cal.json"
    big.write_bytes(b" " * (files.CAPS["calibration"] + 1))
    with pytest.raises(files.FileProblem, match="over the 1 MB"):
        files.read_bytes(big, "parameter 'domain_calibration'", "calibration")
    from tta_perception import weights_only

    with pytest.raises(weights_only.WeightsOnlyError, match="FIFO"):
        weights_only.load(fifo)


def test_a_reload_whose_calibration_became_a_fifo_fails_without_blocking_frames(ros, tmp_path):
    import json

    from tta_perception.engine.domains import calibrate, source_features

    model = H.tiny_seg()
    cal = tmp_path / "cal.json"
    src = torch.rand(8, 3, 32, 64)
    cal.write_text(json.dumps(calibrate(source_features(model, src))))
    rig = Rig(ros, **dict(SEG, domain_memory=True, domain_calibration=str(cal)))
    assert rig.count("state") == "active", rig.count("config_error")
    _serves(rig, 1)
    cal.unlink()
    os.mkfifo(cal)  # what the parameter names is now a FIFO: the reload reads it
    assert _set(rig, window=6).successful
    H.wait_until(lambda: rig.count("reload_failures") == 1, what="the reload to fail")
    assert "FIFO" in rig.count("reload_error")
    _serves(rig, 2)


def test_model_and_resume_from_say_what_a_path_is(ros, tmp_path):
    rig = Rig(ros, **SEG)
    result = _set(rig, model=str(tmp_path), architecture="")
    assert not result.successful and "is a directory" in result.reason and "not found" not in result.reason
    result = _set(rig, model=str(tmp_path / "x.pt"), architecture="")
    assert not result.successful and "not found" in result.reason


def test_resume_from_at_run_time_is_checked_and_never_breaks_later_reloads(ros, tmp_path, fifo):
    state_dir = tmp_path / "states"
    rig = Rig(ros, **dict(SEG, state_dir=str(state_dir)))
    _serves(rig, 1)
    for value, what in ((str(tmp_path), "is a directory"), ("/dev/zero", "character device"),
                        (str(fifo), "FIFO"), (str(tmp_path / "nope.pt"), "not found"),
                        ("/etc/passwd", "is not a node state")):
        result = _set(rig, resume_from=value)
        assert not result.successful and what in result.reason and "'resume_from'" in result.reason, result.reason
    assert rig.node.get_parameter("resume_from").value == ""
    assert _save(ros, rig).success
    saved = state_dir / "tta_node.pt"
    assert _set(rig, resume_from=str(saved)).successful  # a real state: accepted, for the next configure
    for method in ("norm", "tent"):  # later reloads start from the source state and succeed
        assert _set(rig, method=method).successful
        H.wait_until(lambda: rig.count("method") == method and not rig.count("reloading"), what=method)
    assert rig.count("reload_failures") == 0
    _serves(rig, 2)


# --------------------------------------------------------------------------- lost in transport
def test_frames_a_camera_never_sent_are_not_lost_in_transport(ros):
    """A camera that skips frames itself (gaps in its stamps) loses none in transport: the node counts
    per publisher from DDS's sequence numbers, which only frames that were sent take. Losses DDS makes:
    test_transport.py."""
    rig = Rig(ros, **dict(SEG, qos_reliability="best_effort"))
    pub = rig.pub()
    sent = 0
    for i in range(60):  # a 10 Hz camera that skips every third frame
        if i % 3 == 2:
            continue
        pub.publish(H.image_msg(H.frame(32, 64), stamp=divmod(i * 100_000_000, 10**9)))
        sent += 1
        time.sleep(0.02)
    H.wait_until(lambda: rig.count("frames_received") == sent, what="every frame sent")
    assert rig.count("lost_in_transport") == 0
    assert abs(rig.count("stamp_period_ms") - 100) < 5
    assert not rig.node.session.counters.warned_transport


def test_stamp_gap_estimate():
    gaps = StampGaps()
    lost = sum(gaps.add(0.1 * i) for i in range(100) if i % 4)  # a quarter missing
    assert 22 <= lost <= 25 and abs(gaps.period() - 0.1) < 1e-6
    # a pause of the camera is not a loss, a stamp that goes back starts a new chain,
    # unchanging stamps (drivers that leave them 0) give no estimate
    assert gaps.add(100.0) == 0 and gaps.add(100.1) == 0 and gaps.add(5.0) == 0
    flat = StampGaps()
    assert sum(flat.add(0.0) for _ in range(50)) == 0 and flat.period() != flat.period()


def test_throttled_and_plain_log_lines_never_take_the_node_down(ros):
    """rclpy raises when one call site logs with other filters than before; a bad frame (throttled
    warning) and frames lost in transport (a plain warning) in one run ended the node's spin."""
    rig = Rig(ros, **SEG)
    log = rig.node.session.log
    for _ in range(2):
        log.warning("throttled", throttle=True)
        log.warning("plain")
        log.error("throttled", throttle=True)
        log.error("plain")
    pub = rig.pub()
    pub.publish(H.raw_msg("rgb8", 32, 64, 192, b"\x00" * 100, stamp=(1, 0)))  # a bad frame: throttled
    # frames lost in transport (a gap in a publisher's numbers): the plain lost-in-transport warning
    for seq in (1, 2, 5):
        rig.node.session.arrival(10.0 + seq, source=b"camera-gid", seq=seq)
    assert rig.count("lost_in_transport") == 2 and rig.node.session.counters.warned_transport
    _serves(rig, 100)
    assert not ros.errors, ros.errors
