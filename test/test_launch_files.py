"""carla_weather.launch.py and replay.launch.py: their pure argument handling (``plan``) everywhere,
the real launch description where launch/launch_ros are installed; the config files they use; the
launchers of the new executables; the ``dds_profile`` argument of all three launch files."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"


def _module(name):
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no launch import at module level
    return module


def _values(module, **over):
    values = {k: (v[0] if v[0] is not None else "") for k, v in module.ARGUMENTS.items()}
    values.update(over)
    return values


def _by_exe(actions):
    return {a.get("executable", a["kind"]): a for a in actions}


KILTED = {"ROS_DISTRO": "kilted"}  # Fast DDS 3: FASTDDS_DEFAULT_PROFILES_FILE


def _nodes(actions):
    """The plan without its first item, the ``dds_profile`` environment (tested on its own below)."""
    assert actions[0]["kind"] == "dds_profile"
    return actions[1:]


# ------------------------------------------------------------------------------- carla_weather.launch
def test_synthetic_mode_runs_camera_node_and_evaluator():
    m = _module("carla_weather.launch.py")
    actions = _nodes(m.plan(_values(m)))
    kinds = [(a["kind"], a.get("executable")) for a in actions]
    assert kinds == [("node", "weather_camera"), ("lifecycle_node", "tta_node"), ("node", "evaluator")]
    a = _by_exe(actions)
    cam = a["weather_camera"]
    assert cam["parameters"][0] == m.DEFAULT_WEATHER_PARAMS and Path(m.DEFAULT_WEATHER_PARAMS).is_file()
    assert cam["parameters"][1] == {"use_sim_time": False, "schedule": "dynamic", "wait_for_subscribers": 1,
                                    "wait_for_truth_subscribers": 1}
    tta = a["tta_node"]
    assert tta["parameters"] == [m.DEFAULT_PARAMS, {"use_sim_time": False}]
    assert ("image", "camera/image_raw") in tta["remappings"]  # relative: follows namespace:=
    ev = a["evaluator"]["parameters"][1]
    assert ev["labels"] == ["dplot"] and ev["prefix"] == "dplot_"  # the method of config/adapt.yaml
    assert ev["prediction_topics"] == ["class_ids"] and ev["output_dir"] == "runs/weather_loop"


def test_synthetic_overrides_and_duration():
    m = _module("carla_weather.launch.py")
    actions = m.plan(_values(m, method="source", device="cpu", schedule="/tmp/s.yaml", rate="5", frame_stride="4",
                             encoding="bgra8", duration="60", namespace="sim", evaluator="false"))
    a = _by_exe(actions)
    assert "evaluator" not in a
    assert a["weather_camera"]["parameters"][1] == {
        "use_sim_time": False, "schedule": "/tmp/s.yaml", "rate": 5.0, "frame_stride": 4, "encoding": "bgra8",
        "wait_for_subscribers": 1, "wait_for_truth_subscribers": 0}
    assert a["weather_camera"]["namespace"] == a["tta_node"]["namespace"] == "sim"
    assert a["tta_node"]["parameters"][1] == {"use_sim_time": False, "method": "source", "device": "cpu"}
    assert actions[-1] == {"kind": "shutdown_after", "period": 60.0, "reason": "duration:=60 s elapsed"}
    with pytest.raises(ValueError, match="mode"):
        m.plan(_values(m, mode="gazebo"))


def test_synthetic_cameras_wire_each_view_to_one_node_and_the_evaluator():
    m = _module("carla_weather.launch.py")
    a = _by_exe(m.plan(_values(m, method="norm", cameras="4")))
    views = ["front", "rear", "narrow", "wide"]
    assert a["weather_camera"]["parameters"][1]["cameras"] == views
    assert a["weather_camera"]["remappings"] == []
    tta = a["tta_node"]
    assert tta["parameters"][1]["cameras"] == views
    for v in views:  # relative: follows namespace:=
        assert (f"{v}/image", f"{v}/image_raw") in tta["remappings"]
    ev = a["evaluator"]["parameters"][1]
    assert ev["cameras"] == views and ev["prediction_topics"] == ["class_ids"] and ev["labels"] == ["norm"]
    named = _by_exe(m.plan(_values(m, cameras="front,wide")))
    assert named["weather_camera"]["parameters"][1]["cameras"] == ["front", "wide"]
    one = _by_exe(m.plan(_values(m, cameras="1")))  # the single camera, as before
    assert "cameras" not in one["weather_camera"]["parameters"][1] and "cameras" not in one["tta_node"]["parameters"][1]
    assert "cameras" not in one["evaluator"]["parameters"][1]
    for bad, message in (("5", "camera count must be 1..4"), ("front,side", "distinct views"),
                         ("front,front", "distinct views")):
        with pytest.raises(ValueError, match=message):
            m.plan(_values(m, cameras=bad))
    with pytest.raises(ValueError, match="leave image_topic empty"):
        m.plan(_values(m, cameras="2", image_topic="/cam"))
    with pytest.raises(ValueError, match="mode:=synthetic"):
        m.plan(_values(m, cameras="2", mode="carla", bridge="false"))


def test_carla_mode_drives_the_server_weather_and_reads_the_bridge_camera(tmp_path):
    m = _module("carla_weather.launch.py")
    share = tmp_path / "carla_ros_bridge"
    (share / "launch").mkdir(parents=True)
    (share / "launch" / "carla_ros_bridge_with_example_ego_vehicle.launch.py").write_text("# stand-in\n")

    def find(package):
        if package != "carla_ros_bridge":
            raise LookupError(package)
        return str(share)

    actions = _nodes(m.plan(_values(m, mode="carla", host="sim-host", port="2010"), find_share=find))
    assert [a["kind"] for a in actions] == ["include", "node", "lifecycle_node"]  # no evaluator by default
    include, carla, tta = actions
    assert include["path"].endswith("carla_ros_bridge_with_example_ego_vehicle.launch.py")
    assert include["launch_arguments"] == {"host": "sim-host", "port": "2010", "timeout": "10.0"}
    assert carla["executable"] == "carla_weather"
    assert carla["parameters"][1] == {"use_sim_time": True, "schedule": "dynamic", "host": "sim-host",
                                      "port": 2010, "timeout": 10.0}
    assert ("image", "/carla/ego_vehicle/rgb_front/image") in tta["remappings"]
    assert tta["parameters"][1]["use_sim_time"] is True

    def missing(package):
        raise LookupError(package)

    actions = _nodes(m.plan(_values(m, mode="carla"), find_share=missing))
    assert actions[0]["kind"] == "log" and "start the bridge yourself" in actions[0]["msg"]
    assert _nodes(m.plan(_values(m, mode="carla", bridge="false"), find_share=find))[0]["kind"] == "node"
    with pytest.raises(ValueError, match="carla_ros_bridge package is not installed"):
        m.plan(_values(m, mode="carla", bridge="true"), find_share=missing)


def test_carla_mode_scores_against_the_semantic_camera_when_given():
    m = _module("carla_weather.launch.py")
    none = lambda package: (_ for _ in ()).throw(LookupError(package))  # noqa: E731
    assert "evaluator" not in _by_exe(m.plan(_values(m, mode="carla"), find_share=none))
    topic = "/carla/ego_vehicle/semantic_segmentation_front/image"
    ev = _by_exe(m.plan(_values(m, mode="carla", truth_topic=topic), find_share=none))["evaluator"]
    assert ev["parameters"][1]["truth_encoding"] == "carla_palette" and ev["parameters"][1]["use_sim_time"]
    assert ev["remappings"] == [("camera/ground_truth/class_ids", topic)]
    with pytest.raises(ValueError, match="truth_topic"):
        m.plan(_values(m, mode="carla", evaluator="true"), find_share=none)
    synthetic = _by_exe(m.plan(_values(m)))["evaluator"]
    assert "truth_encoding" not in synthetic["parameters"][1] and synthetic["remappings"] == []


@pytest.mark.parametrize("over, message", [
    ({"max_frames": "abc"}, "launch argument 'max_frames' must be an integer, got 'abc'"),
    ({"frame_stride": "2.5"}, "launch argument 'frame_stride' must be an integer, got '2.5'"),
    ({"width": "wide"}, "launch argument 'width' must be an integer, got 'wide'"),
    ({"rate": "fast"}, "launch argument 'rate' must be a number, got 'fast'"),
    ({"rate": "inf"}, "launch argument 'rate' must be a finite number, got 'inf'"),
    ({"duration": "1m"}, "launch argument 'duration' must be a number, got '1m'"),
    ({"mode": "carla", "bridge": "false", "port": "20o0"},
     "launch argument 'port' must be an integer, got '20o0'"),
    ({"mode": "carla", "bridge": "false", "timeout": "long"},
     "launch argument 'timeout' must be a number, got 'long'"),
])
def test_carla_weather_numbers_that_are_not_name_the_argument(over, message):
    m = _module("carla_weather.launch.py")
    with pytest.raises(ValueError) as err:
        m.plan(_values(m, **over))
    assert str(err.value) == message


# ------------------------------------------------------------------------------------- replay.launch
@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    pytest.importorskip("rosbags")
    from tta_perception.bags.make import BagTopics, make_bag

    root = tmp_path_factory.mktemp("launch_bags")
    make_bag("clear", root / "with_truth", frames=2, size=(16, 32), progress=False)
    make_bag("clear", root / "compressed", frames=2, size=(16, 32), encoding="jpeg", progress=False,
             topics=BagTopics(truth=None, weather=None))
    return root


def test_replay_plays_the_bag_on_its_clock_with_the_qos_overrides(bags):
    m = _module("replay.launch.py")
    bag = str(bags / "with_truth")
    actions = _nodes(m.plan(_values(m, bag=bag)))
    assert [a["kind"] for a in actions] == ["lifecycle_node", "node", "play"]
    tta, ev, play = actions
    assert tta["parameters"][1] == {"use_sim_time": True, "compressed": False}
    assert ("image", "/camera/image_raw") in tta["remappings"]
    assert ev["executable"] == "evaluator" and ev["parameters"][1]["use_sim_time"] is True
    assert ("camera/ground_truth/class_ids", "/camera/ground_truth/class_ids") in ev["remappings"]
    assert ("weather", "/weather") in ev["remappings"]
    cmd = play["cmd"]
    assert cmd[:5] == ["ros2", "bag", "play", bag, "--clock"]
    qos = cmd[cmd.index("--qos-profile-overrides-path") + 1]
    assert qos == m.DEFAULT_QOS and Path(qos).is_file()
    assert play["delay"] == 5.0 and play["drain"] == 3.0


def test_replay_compressed_bag_without_truth(bags):
    m = _module("replay.launch.py")
    actions = _nodes(m.plan(_values(m, bag=str(bags / "compressed"), method="tent", namespace="r")))
    assert [a["kind"] for a in actions] == ["lifecycle_node", "play"]  # no ground truth: no evaluator
    tta = actions[0]
    assert tta["parameters"][1] == {"use_sim_time": True, "method": "tent", "compressed": True}
    assert ("image/compressed", "/camera/image_raw/compressed") in tta["remappings"]
    with pytest.raises(ValueError, match="no ground truth"):
        m.plan(_values(m, bag=str(bags / "compressed"), evaluator="true"))


def test_replay_bad_arguments(bags, tmp_path):
    m = _module("replay.launch.py")
    with pytest.raises(ValueError, match="'bag' is required"):
        m.plan(_values(m, bag=""))
    with pytest.raises(ValueError, match="no metadata.yaml"):
        m.plan(_values(m, bag=str(tmp_path)))
    with pytest.raises(ValueError, match="'/front' not in the bag"):
        m.plan(_values(m, bag=str(bags / "with_truth"), image_topic="/front"))
    with pytest.raises(ValueError, match="is std_msgs/msg/String, not an Image"):
        m.plan(_values(m, bag=str(bags / "with_truth"), image_topic="/weather"))


@pytest.mark.parametrize("over, message", [
    ({"rate": "fast"}, "launch argument 'rate' must be a number, got 'fast'"),
    ({"rate": "0"}, "launch argument 'rate' must be > 0, got '0'"),
    ({"start_delay": "soon"}, "launch argument 'start_delay' must be a number, got 'soon'"),
    ({"drain": "nan"}, "launch argument 'drain' must be a finite number, got 'nan'"),
])
def test_replay_numbers_that_are_not_name_the_argument(over, message):
    m = _module("replay.launch.py")
    with pytest.raises(ValueError) as err:
        m.plan(_values(m, bag="night", **over), topics={"/camera/image_raw": m.IMAGE})
    assert str(err.value) == message


def test_quality_and_guard_reach_the_node_from_every_launch_file(bags):
    """``quality:=`` / ``guard:=`` as the other overrides: empty keeps the parameter file's value, true/false
    sets the node parameter; the three launch files configure the node the same way."""
    ad = _module("adapt.launch.py")
    assert ad.node_settings(_values(ad, quality="false", guard="true"))["parameters"][1] == {
        "use_sim_time": False, "quality": False, "guard": True}
    assert ad.node_settings(_values(ad))["parameters"][1] == {"use_sim_time": False}
    cw = _module("carla_weather.launch.py")
    tta = _by_exe(_nodes(cw.plan(_values(cw, guard="true"))))["tta_node"]
    assert tta["parameters"][1] == {"use_sim_time": False, "guard": True}
    rp = _module("replay.launch.py")
    tta = _nodes(rp.plan(_values(rp, bag=str(bags / "with_truth"), quality="false", guard="false")))[0]
    assert tta["parameters"][1] == {"use_sim_time": True, "compressed": False, "quality": False, "guard": False}
    for m in (ad, cw, rp):
        for name in ("quality", "guard"):
            default, _, choices = m.ARGUMENTS[name]
            assert default == "" and choices == ["", "true", "false"], (m.__name__, name)


def test_launch_descriptions_with_real_launch():
    pytest.importorskip("launch")
    pytest.importorskip("launch_ros")
    from launch.actions import DeclareLaunchArgument

    for name, expected in (("carla_weather.launch.py", {"mode", "schedule", "method", "device", "duration",
                                                         "dds_profile"}),
                           ("replay.launch.py", {"bag", "rate", "qos_file", "method", "device", "dds_profile"}),
                           ("adapt.launch.py", {"image_topic", "dds_profile", "quality", "guard"})):
        ld = _module(name).generate_launch_description()
        declared = {a.name for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
        assert expected <= declared


def test_plans_convert_to_real_launch_actions(bags):
    pytest.importorskip("launch")
    pytest.importorskip("launch_ros")
    from launch.actions import LogInfo, SetEnvironmentVariable

    from tta_perception.ros.dds_profile import FASTDDS_FILE

    dds = [SetEnvironmentVariable, SetEnvironmentVariable, LogInfo]  # a given path replaces both variables
    mine = {**KILTED, "FASTRTPS_DEFAULT_PROFILES_FILE": "/etc/dds/mine.xml"}
    cw = _module("carla_weather.launch.py")
    actions = cw.to_actions(cw.plan(_values(cw, duration="5", dds_profile=str(FASTDDS_FILE)), environ=mine))
    assert [type(a) for a in actions[:3]] == dds and len(actions) == 3 + 4
    rp = _module("replay.launch.py")
    actions = rp.to_actions(rp.plan(_values(rp, bag=str(bags / "with_truth")), environ=KILTED))
    assert [type(a) for a in actions[:2]] == dds[1:] and len(actions) == 2 + 4


# --------------------------------------------------------------------------------------- dds_profile
def test_adapt_launch_dds_profile_sets_the_shipped_profile_unless_told_otherwise(tmp_path):
    from tta_perception.ros.dds_profile import CYCLONEDDS_FILE, FASTDDS_FILE

    m = _module("adapt.launch.py")
    assert m.ARGUMENTS["dds_profile"][0] == "default"
    shipped = str(FASTDDS_FILE)
    settings = m.dds_settings("default", KILTED)
    assert settings["env"] == {"FASTDDS_DEFAULT_PROFILES_FILE": shipped}
    assert settings["msg"] == f"dds_profile: the shipped profile for large frames, FASTDDS_DEFAULT_PROFILES_FILE={shipped}"
    assert m.dds_settings("default", {"ROS_DISTRO": "humble"})["env"] == {"FASTRTPS_DEFAULT_PROFILES_FILE": shipped}
    assert m.dds_settings("default", {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"})["env"] == {
        "CYCLONEDDS_URI": f"file://{CYCLONEDDS_FILE}"}
    assert m.dds_settings("none", KILTED) == {"env": {}, "msg": "dds_profile:=none: no DDS profile set"}
    mine = {**KILTED, "FASTDDS_DEFAULT_PROFILES_FILE": "/etc/dds/mine.xml"}
    kept = m.dds_settings("default", mine)  # the user's own profile stays
    assert kept["env"] == {} and "keeps FASTDDS_DEFAULT_PROFILES_FILE=/etc/dds/mine.xml" in kept["msg"]
    own = tmp_path / "own.xml"
    own.write_text("<dds><profiles/></dds>")
    assert m.dds_settings(str(own), mine)["env"] == {"FASTDDS_DEFAULT_PROFILES_FILE": str(own)}  # given: replaces
    with pytest.raises(ValueError) as err:
        m.dds_settings(str(tmp_path / "nope.xml"), KILTED)
    assert str(err.value).startswith(f"dds_profile: '{tmp_path / 'nope.xml'}' not found")


def test_carla_weather_and_replay_set_the_profile_before_any_process(bags, tmp_path):
    """First in the plan, so the camera, the bridge (an included launch file) and the bag player (which
    publish the large frames) start with it."""
    from tta_perception.ros.dds_profile import FASTDDS_FILE

    env = {"FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_FILE)}
    cw = _module("carla_weather.launch.py")
    none = lambda package: (_ for _ in ()).throw(LookupError(package))  # noqa: E731
    for values in (_values(cw), _values(cw, mode="carla")):
        first = cw.plan(values, find_share=none, environ=KILTED)[0]
        assert first["kind"] == "dds_profile" and first["env"] == env
    assert cw.plan(_values(cw, dds_profile="none"), environ=KILTED)[0]["env"] == {}
    rp = _module("replay.launch.py")
    first = rp.plan(_values(rp, bag=str(bags / "with_truth")), environ=KILTED)[0]
    assert first["kind"] == "dds_profile" and first["env"] == env
    with pytest.raises(ValueError, match="is not an .xml file"):
        rp.plan(_values(rp, bag=str(bags / "with_truth"), dds_profile=str(REPO / "setup.py")), environ=KILTED)


def test_adapt_launch_sets_the_environment_before_the_node_with_real_launch(monkeypatch):
    pytest.importorskip("launch")
    pytest.importorskip("launch_ros")
    from launch import LaunchContext
    from launch.actions import LogInfo, SetEnvironmentVariable
    from launch.utilities import perform_substitutions
    from launch_ros.actions import LifecycleNode

    from tta_perception.ros.dds_profile import FASTDDS_FILE

    for name in ("RMW_IMPLEMENTATION", "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ROS_DISTRO", "kilted")
    m = _module("adapt.launch.py")
    context = LaunchContext()
    for name, (default, _, _) in m.ARGUMENTS.items():
        context.launch_configurations[name] = default
    actions = m._launch_node(context)
    assert [type(a) for a in actions] == [SetEnvironmentVariable, LogInfo, LifecycleNode]
    assert perform_substitutions(context, actions[0].name) == "FASTDDS_DEFAULT_PROFILES_FILE"
    assert perform_substitutions(context, actions[0].value) == str(FASTDDS_FILE)


# -------------------------------------------------------------------------------------------- config
def test_weather_loop_yaml_sets_only_declared_parameters_of_the_right_types():
    pytest.importorskip("rclpy", reason="the nodes' parameter tables need the ROS 2 wheels")
    pytest.importorskip("diagnostic_msgs", reason="the nodes' parameter tables need the ROS 2 wheels")
    from tta_perception.ros import carla_weather, evaluator, weather_camera

    doc = yaml.safe_load((REPO / "config" / "weather_loop.yaml").read_text())
    tables = {"/**/weather_camera": weather_camera.PARAMS, "/**/carla_weather": carla_weather.PARAMS,
              "/**/evaluator": evaluator.PARAMS}
    assert set(doc) == set(tables)
    for key, params in tables.items():
        values = doc[key]["ros__parameters"]
        unknown = set(values) - set(params)
        assert not unknown, f"{key}: parameters the node does not declare: {unknown}"
        for name, value in values.items():
            default = params[name][0]
            if isinstance(default, (bool, int, float, str, list)):
                assert type(value) is type(default), f"{key} {name}: {value!r} vs default {default!r}"


def test_replay_qos_file_is_a_valid_override_file():
    doc = yaml.safe_load((REPO / "config" / "replay_qos.yaml").read_text())
    assert "/camera/image_raw" in doc and "/carla/ego_vehicle/rgb_front/image" in doc
    for topic, profile in doc.items():
        assert topic.startswith("/")
        assert set(profile) <= {"history", "depth", "reliability", "durability", "deadline", "lifespan",
                                "liveliness", "liveliness_lease_duration", "avoid_ros_namespace_conventions"}
        assert profile["reliability"] == "reliable" and profile["durability"] == "volatile"
        assert profile["history"] == "keep_last" and profile["depth"] > 0


# ----------------------------------------------------------------------------------------- launchers
@pytest.mark.parametrize("exe", ["weather_camera", "carla_weather", "evaluator"])
def test_launchers_are_installed_and_run_their_module(tmp_path, exe):
    """setup.py installs them in lib/tta_perception (where launch_ros looks); each runs the module of
    its own name with the interpreter of its environment."""
    setup = (REPO / "setup.py").read_text()
    assert f'f"{{PACKAGE}}/ros/bin/{exe}"' in setup and f"{exe} = tta_perception.ros.{exe}:main" in setup
    venv = tmp_path / "venv"
    (venv / "lib" / "tta_perception").mkdir(parents=True)
    (venv / "bin").mkdir()
    launcher = venv / "lib" / "tta_perception" / exe
    shutil.copy2(REPO / "tta_perception" / "ros" / "bin" / exe, launcher)
    assert os.access(launcher, os.X_OK)
    fake = venv / "bin" / "python3"
    fake.write_text('#!/bin/sh\necho "venv-python $*"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "TTA_PERCEPTION_PYTHON"}
    out = subprocess.run([str(launcher), "--ros-args", "-p", "a:=1"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.stdout.strip() == f"venv-python -m tta_perception.ros.{exe} --ros-args -p a:=1"
