"""The DDS profiles for large frames: the shipped XML files (they parse, and their numbers hold a
1920x1080 rgb8 frame), the choice -> file -> environment rules of ``ros/dds_profile.py``, and over
real Fast DDS (rclpy in two processes, no mocks): a best-effort reader gets every 640x480 rgb8 frame
of a publisher that applied the shipped profile (without it, most are lost on one host)."""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tta_perception.ros import dds_profile as D

FRAME_1080P = 1920 * 1080 * 3  # one rgb8 frame, bytes
DEPTH = 5
PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "CYCLONEDDS_URI")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element, name):
    return [c for c in element if _local(c.tag) == name]


def _one(element, path: str):
    for name in path.split("/"):
        found = _children(element, name)
        assert len(found) == 1, f"<{name}> under <{_local(element.tag)}>: {len(found)} found"
        element = found[0]
    return element


def _memsize(text: str) -> int:
    """A Cyclone DDS size ('8MiB', '65500B') in bytes."""
    units = {"B": 1, "kB": 1024, "KiB": 1024, "MB": 1 << 20, "MiB": 1 << 20, "GB": 1 << 30, "GiB": 1 << 30}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * units[unit])
    raise AssertionError(f"no unit in {text!r}")


# ----------------------------------------------------------------------------------------- the XML files
def test_fastdds_profile_holds_five_1080p_frames_in_shared_memory():
    root = ET.parse(D.FASTDDS_FILE).getroot()
    assert _local(root.tag) == "dds"
    profiles = _one(root, "profiles")
    descriptors = {_one(d, "transport_id").text: d for d in _children(_one(profiles, "transport_descriptors"),
                                                                     "transport_descriptor")}
    kinds = {_one(d, "type").text: d for d in descriptors.values()}
    assert set(kinds) == {"SHM", "UDPv4"}
    assert int(_one(kinds["SHM"], "segment_size").text) >= FRAME_1080P * DEPTH
    for name in ("sendBufferSize", "receiveBufferSize"):  # one 1080p frame per socket
        assert int(_one(kinds["UDPv4"], name).text) >= FRAME_1080P
    participant = _one(profiles, "participant")
    assert participant.get("is_default_profile") == "true"  # the profile every participant gets
    rtps = _one(participant, "rtps")
    assert {t.text for t in _children(_one(rtps, "userTransports"), "transport_id")} == set(descriptors)
    assert _one(rtps, "useBuiltinTransports").text == "false"  # exactly these transports


def test_cyclonedds_config_asks_for_a_1080p_frame_of_receive_buffer_without_requiring_it():
    root = ET.parse(D.CYCLONEDDS_FILE).getroot()
    assert _local(root.tag) == "CycloneDDS"
    domain = _one(root, "Domain")
    buffer = _one(domain, "Internal/SocketReceiveBufferSize")
    assert _memsize(buffer.get("max")) >= FRAME_1080P
    assert buffer.get("min") is None  # a min above net.core.rmem_max would stop the process from starting
    assert _memsize(_one(domain, "General/MaxMessageSize").text) == 65500


def test_profiles_are_installed_under_share_and_as_package_data():
    setup = (D.HERE.parent.parent.parent / "setup.py").read_text()
    assert '(f"share/{PACKAGE}/dds", sorted(glob(f"{PACKAGE}/ros/dds/*.xml")))' in setup
    assert 'f"{PACKAGE}.ros.dds": ["*.xml"]' in setup
    assert sorted(p.name for p in D.HERE.glob("*.xml")) == ["cyclonedds_large_frames.xml",
                                                             "fastdds_large_frames.xml"]


def test_the_module_imports_no_rclpy():
    """It must be usable before rclpy starts DDS (the variables are read when a participant is made)."""
    code = "import sys, tta_perception.ros.dds_profile; print(sorted(m for m in sys.modules if 'rcl' in m))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]


# ------------------------------------------------------------------------------------------ profile_path
@pytest.fixture
def clean_env(monkeypatch):
    for name in ("RMW_IMPLEMENTATION", *PROFILE_VARS):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_profile_path_default_follows_the_rmw(clean_env):
    assert D.profile_path("default") == D.FASTDDS_FILE and D.FASTDDS_FILE.is_file()
    assert D.profile_path(" Default ", "rmw_fastrtps_dynamic_cpp") == D.FASTDDS_FILE
    assert D.profile_path("default", "rmw_cyclonedds_cpp") == D.CYCLONEDDS_FILE and D.CYCLONEDDS_FILE.is_file()
    assert D.profile_path("default", "rmw_zenoh_cpp") is None
    assert D.profile_path("none") is None
    clean_env.setenv("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
    assert D.profile_path("default") == D.CYCLONEDDS_FILE


def test_profile_path_takes_a_users_xml_file_as_an_absolute_path(clean_env, tmp_path):
    own = tmp_path / "own.xml"
    own.write_text("<dds><profiles/></dds>")
    clean_env.chdir(tmp_path)
    assert D.profile_path("own.xml") == own
    cyclone = tmp_path / "cyclone.xml"
    cyclone.write_text('<CycloneDDS xmlns="https://cdds.io/config"><Domain Id="any"/></CycloneDDS>')
    assert D.profile_path(str(cyclone), "rmw_cyclonedds_cpp") == cyclone


def _bad(tmp_path):
    (tmp_path / "settings.yaml").write_text("a: 1\n")
    (tmp_path / "broken.xml").write_text("<dds><profiles></dds>")
    (tmp_path / "package.xml").write_text("<package/>")
    (tmp_path / "a_dir.xml").mkdir()
    return [
        ("", "dds_profile is empty: give default, none or the path of a DDS XML profile"),
        (str(tmp_path / "missing.xml"), f"dds_profile: '{tmp_path / 'missing.xml'}' not found (give default, "
                                        "none or the path of a DDS XML profile)"),
        (str(tmp_path / "a_dir.xml"), "is a directory, not a DDS profile file"),
        (str(tmp_path / "settings.yaml"), "is not an .xml file"),
        (str(tmp_path / "broken.xml"), "is not well-formed XML (mismatched tag: line 1"),
        (str(tmp_path / "package.xml"), "has root element <package>, neither a Fast DDS profile"),
        (str(D.CYCLONEDDS_FILE), "is a Cyclone DDS configuration, but the RMW is rmw_fastrtps_cpp"),
        ("/dev/zero", "is a character device, not a DDS profile file"),
    ]


def test_a_bad_user_path_is_one_line_that_says_what_is_wrong(clean_env, tmp_path):
    for choice, message in _bad(tmp_path):
        with pytest.raises(ValueError) as err:
            D.profile_path(choice)
        assert message in str(err.value) and "\n" not in str(err.value), (choice, str(err.value))
    with pytest.raises(ValueError, match="is a Fast DDS profile, but the RMW is rmw_cyclonedds_cpp"):
        D.profile_path(str(D.FASTDDS_FILE), "rmw_cyclonedds_cpp")  # the other way round
    with pytest.raises(ValueError, match="RMW_IMPLEMENTATION=rmw_zenoh_cpp reads no Fast DDS or Cyclone DDS "
                                         "profile; give dds_profile:=none"):
        D.profile_path(str(D.FASTDDS_FILE), "rmw_zenoh_cpp")


# ------------------------------------------------------------------------------------------- profile_env
KILTED = {"ROS_DISTRO": "kilted"}


def test_profile_env_names_the_variable_of_the_fast_dds_in_use_or_cyclones_uri(monkeypatch):
    shipped = str(D.FASTDDS_FILE)
    assert D.profile_env("default", KILTED) == {"FASTDDS_DEFAULT_PROFILES_FILE": shipped}  # Fast DDS 3
    for distro in ("humble", "jazzy"):  # Fast DDS 2.6 and 2.14 read only the old name
        assert D.profile_env("default", {"ROS_DISTRO": distro}) == {"FASTRTPS_DEFAULT_PROFILES_FILE": shipped}
    assert D.profile_env("default", {"ROS_DISTRO": "rolling", "RMW_IMPLEMENTATION": "rmw_fastrtps_dynamic_cpp"}) == {
        "FASTDDS_DEFAULT_PROFILES_FILE": shipped}
    assert D.profile_env("default", {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}) == {
        "CYCLONEDDS_URI": f"file://{D.CYCLONEDDS_FILE}"}
    assert D.profile_env("none", KILTED) == {}
    monkeypatch.setattr(D, "_wheel_major", lambda: 3)  # the PyPI wheels set no ROS_DISTRO: ros-fastdds 3.x
    assert D.profile_env("default", {}) == {"FASTDDS_DEFAULT_PROFILES_FILE": shipped}
    monkeypatch.setattr(D, "_wheel_major", lambda: None)  # unknown: both names
    assert D.profile_env("default", {}) == {"FASTDDS_DEFAULT_PROFILES_FILE": shipped,
                                            "FASTRTPS_DEFAULT_PROFILES_FILE": shipped}
    other = D.resolve("default", {"RMW_IMPLEMENTATION": "rmw_zenoh_cpp"})
    assert other.env == {} and other.path is None
    assert other.note.startswith("dds_profile:=default: no shipped profile for RMW_IMPLEMENTATION=rmw_zenoh_cpp")


def test_default_keeps_the_users_own_profile_and_a_path_replaces_it(tmp_path):
    mine = {**KILTED, "FASTRTPS_DEFAULT_PROFILES_FILE": "/etc/dds/mine.xml"}  # Kilted's rmw still reads it
    kept = D.resolve("default", mine)
    assert kept.env == {} and kept.path is None
    assert kept.note == ("dds_profile:=default keeps FASTRTPS_DEFAULT_PROFILES_FILE=/etc/dds/mine.xml from the "
                         "environment (give dds_profile:=<path> to replace it)")
    assert D.profile_env("default", {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp", "CYCLONEDDS_URI": "file:///x"}) == {}
    assert D.profile_env("default", {**KILTED, "FASTDDS_DEFAULT_PROFILES_FILE": " "}) != {}  # blank: not a setting
    # Fast DDS 2.14 (Jazzy) ignores FASTDDS_DEFAULT_PROFILES_FILE: that is no profile of the user's there
    assert D.profile_env("default", {"ROS_DISTRO": "jazzy", "FASTDDS_DEFAULT_PROFILES_FILE": "/etc/dds/mine.xml"}) == {
        "FASTRTPS_DEFAULT_PROFILES_FILE": str(D.FASTDDS_FILE)}
    own = tmp_path / "own.xml"
    own.write_text("<dds><profiles/></dds>")
    replaced = D.resolve(str(own), mine)  # every variable DDS reads now names the given file
    assert replaced.env == {"FASTDDS_DEFAULT_PROFILES_FILE": str(own), "FASTRTPS_DEFAULT_PROFILES_FILE": str(own)}
    assert replaced.note == (f"dds_profile: the given profile, FASTDDS_DEFAULT_PROFILES_FILE={own} "
                             "(replaces FASTRTPS_DEFAULT_PROFILES_FILE=/etc/dds/mine.xml)")
    assert D.profile_env("none", mine) == {}


def test_apply_sets_the_environment_it_is_given_and_refuses_after_rclpy_init(monkeypatch):
    env = {"PATH": "/bin", **KILTED}
    note = D.apply("default", env)
    assert env == {"PATH": "/bin", **KILTED, "FASTDDS_DEFAULT_PROFILES_FILE": str(D.FASTDDS_FILE)}
    assert note.endswith(f"FASTDDS_DEFAULT_PROFILES_FILE={D.FASTDDS_FILE}")

    class Running:  # rclpy with a live context: DDS has read its profile already
        @staticmethod
        def ok():
            return True

    monkeypatch.setitem(sys.modules, "rclpy", Running)
    with pytest.raises(RuntimeError, match=r"apply\(\) after rclpy.init\(\)"):
        D.apply("default")  # os.environ is left as it was


# ------------------------------------------------------------------------------------ over real Fast DDS
_CAMERA = """
import sys, time
from tta_perception.ros import dds_profile
note = dds_profile.apply(sys.argv[2])  # before rclpy.init: DDS reads the profile when rclpy starts
import numpy as np
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
topic, frames, height, width = sys.argv[1], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rclpy.init()
node = rclpy.create_node("large_frame_camera")
pub = node.create_publisher(Image, topic, QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST,
                                                     reliability=ReliabilityPolicy.BEST_EFFORT))
msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
msg.data = np.full(height * width * 3, 90, np.uint8).tobytes()
end = time.monotonic() + 60
while pub.get_subscription_count() == 0 and time.monotonic() < end:
    time.sleep(0.02)
print("matched", note, flush=True)
sys.stdin.readline()
start = time.monotonic()
for k in range(frames):  # 10 Hz
    msg.header.stamp.sec = k
    pub.publish(msg)
    time.sleep(max(0.0, start + (k + 1) * 0.1 - time.monotonic()))
print("sent", frames, flush=True)
node.destroy_node()
rclpy.shutdown()
"""

_READER = """
import sys, threading
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("large_frame_reader")
stamps = set()
sub = node.create_subscription(Image, sys.argv[1], lambda m: stamps.add(m.header.stamp.sec),
                               QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST,
                                          reliability=ReliabilityPolicy.BEST_EFFORT))
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
ready = False
while not stop.is_set():
    rclpy.spin_once(node, timeout_sec=0.02)
    if not ready and sub.get_publisher_count() > 0:
        print("ready", flush=True)
        ready = True
print("received", len(stamps), flush=True)
node.destroy_node()
rclpy.shutdown()
"""


class _Child:
    """A Python child process with its stdout lines in a queue (a pipe never blocks it)."""

    def __init__(self, code: str, args: list, env: dict, cwd: Path):
        self.p = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str, timeout: float) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line within {timeout} s; output: {self.seen[-10:]}") from None
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def send(self, text: str):
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)


def frames_received(choice: str, tmp_path: Path, frames: int = 100, height: int = 480, width: int = 640):
    """A camera process (``dds_profile.apply(choice)``) publishes ``frames`` rgb8 frames best effort at
    10 Hz to a reader process without a profile; returns (the frames the reader got, the camera's note).
    Both start from an environment without any DDS profile variable, with Fast DDS."""
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_VARS}
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    topic = f"/dds_profile_test_{os.getpid()}/image"
    reader = _Child(_READER, [topic], env, tmp_path)  # tmp_path: no DEFAULT_FASTDDS_PROFILES.xml there
    camera = _Child(_CAMERA, [topic, choice, frames, height, width], env, tmp_path)
    try:
        reader.expect("ready", 60)
        note = camera.expect("matched", 60)
        camera.send("go")
        camera.expect("sent", 60 + frames * 0.2)
        assert camera.p.wait(30) == 0, camera.seen[-5:]
        reader.send("stop")
        received = int(reader.expect("received", 30).split()[1])
        assert reader.p.wait(30) == 0, reader.seen[-5:]
        return received, note
    finally:
        camera.close()
        reader.close()


def test_best_effort_reader_gets_every_vga_frame_of_a_camera_with_the_shipped_profile(tmp_path):
    """The publisher's process is the one that needs the profile: Fast DDS writes a frame into the
    sender's shared-memory segment (512 KiB by default, too small for a 921,600-byte frame: a
    best-effort reader then loses most of them, 0 to 21 of 100 measured here)."""
    pytest.importorskip("rclpy", reason="the ROS 2 wheels are not installed (pip install -e '.[ros]')")
    pytest.importorskip("sensor_msgs")
    received, note = frames_received("default", tmp_path)
    assert note.endswith(f"_DEFAULT_PROFILES_FILE={D.FASTDDS_FILE}"), note
    assert received >= 99, f"{received} of 100 640x480 rgb8 frames with the shipped profile"
