"""Replay a recorded bag (rain, night, ...) through the adaptation node on the bag's clock.

    ros2 launch tta_perception replay.launch.py bag:=/data/night_drive
    ros2 launch tta_perception replay.launch.py bag:=night_bag method:=source output_dir:=runs/replay_src

Plays ``bag`` with ``ros2 bag play --clock`` and the QoS overrides of ``config/replay_qos.yaml``
(reliable + volatile, which both the node's best-effort and the evaluator's reliable subscriptions
match), after ``start_delay`` seconds so the node has loaded its model. ``tta_node`` runs with
``use_sim_time:=true`` on the bag's camera topic (found in the bag's metadata.yaml: Image or
CompressedImage, the embedded camera or the CARLA bridge's). The evaluator runs when the bag has the
ground-truth topic (``evaluator:=auto``). The launch ends ``drain`` seconds after the bag has played.

``dds_profile:=default`` gives the player (which publishes the recorded frames), the node and the
evaluator the DDS profile shipped for large frames; ``none`` or a path as in ``adapt.launch.py``.

Offline and without ROS, ``tta-perception replay BAG --out OUT`` does the same computation frame by
frame. ``plan`` is pure (unit-tested where launch is absent).
"""
import importlib.util
from pathlib import Path

PACKAGE = "tta_perception"
HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "config"
DEFAULT_PARAMS = str(CONFIG / "adapt.yaml")
DEFAULT_WEATHER_PARAMS = str(CONFIG / "weather_loop.yaml")
DEFAULT_QOS = str(CONFIG / "replay_qos.yaml")
TRUTH = "/camera/ground_truth/class_ids"
WEATHER = "/weather"
IMAGE_CANDIDATES = ("/camera/image_raw", "/camera/image_raw/compressed", "/carla/ego_vehicle/rgb_front/image")
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"

ARGUMENTS = {
    "bag": (None, "Bag folder to play (MCAP or sqlite3; the one with metadata.yaml).", None),
    "image_topic": ("", "Camera topic in the bag; '' = found in the bag (" + ", ".join(IMAGE_CANDIDATES)
                    + ", or its only image topic).", None),
    "rate": ("1.0", "Playback rate (ros2 bag play --rate).", None),
    "qos_file": (DEFAULT_QOS, "QoS overrides for ros2 bag play.", None),
    "start_delay": ("5.0", "Seconds to wait before playing (the node loads its model).", None),
    "drain": ("3.0", "Seconds to keep running after the bag ended; then shut down (negative: keep running).",
              None),
    "method": ("", "Adaptation method; '' = params_file.", None),
    "device": ("", "auto, cpu, cuda or cuda:N; '' = params_file.", None),
    "model": ("", "Embedded model name or checkpoint path; '' = params_file.", None),
    "quality": ("", "tta_node: publish each output's quality estimate (quality); '' = params_file.",
                ["", "true", "false"]),
    "guard": ("", "tta_node: the collapse guard (off by default); '' = params_file.", ["", "true", "false"]),
    "params_file": (DEFAULT_PARAMS, "tta_node parameter file.", None),
    "weather_params_file": (DEFAULT_WEATHER_PARAMS, "evaluator parameters.", None),
    "namespace": ("", "Namespace of the node and the evaluator.", None),
    "evaluator": ("auto", "Score against the bag's ground truth: auto (when the bag has it), true, false.",
                  ["auto", "true", "false"]),
    "output_dir": ("runs/replay", "Evaluator output folder.", None),
    "log_level": ("info", "Log level of the nodes.", ["debug", "info", "warn", "error", "fatal"]),
    "dds_profile": ("default", "DDS profile for the player, the node and the evaluator: default (the one "
                    "shipped for large frames, unless the environment names one), none, or the path of a "
                    "Fast DDS or Cyclone DDS XML file.", None),
}


def _sibling(name: str, module: str):
    spec = importlib.util.spec_from_file_location(module, HERE / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bag_topics(bag: str) -> dict:
    """{topic: type} from the bag's metadata.yaml (no rosbags or rosbag2 needed)."""
    import yaml

    path = Path(bag).expanduser()
    meta = path / "metadata.yaml"
    if not meta.is_file():
        raise ValueError(f"bag {path}: no metadata.yaml (not a ROS 2 bag folder; `ros2 bag reindex` can "
                         "rebuild it for a recording that did not finish)")
    try:
        info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
        return {t["topic_metadata"]["name"]: t["topic_metadata"]["type"]
                for t in info.get("topics_with_message_count", [])}
    except Exception as err:
        raise ValueError(f"bag {path}: metadata.yaml cannot be read: {err}") from None


def plan(values: dict, topics: dict | None = None, environ=None) -> list:
    """Launch-argument strings -> actions as plain dicts (pure; ``topics`` defaults to the bag's;
    ``environ``: the launch's environment, for ``dds_profile``, which comes first)."""
    bag = values["bag"].strip()
    if not bag:
        raise ValueError("launch argument 'bag' is required: bag:=<bag folder>")
    carla_launch = _sibling("carla_weather.launch.py", "tta_carla_weather_launch")
    dds = {"kind": "dds_profile",
           **carla_launch._adapt_launch().dds_settings(values.get("dds_profile", "default"), environ)}
    rate, delay, drain = (carla_launch.number(values, key) for key in ("rate", "start_delay", "drain"))
    if rate <= 0:
        raise ValueError(f"launch argument 'rate' must be > 0, got {values['rate'].strip()!r}")
    topics = bag_topics(bag) if topics is None else topics
    image = values["image_topic"].strip()
    if not image:
        found = [t for t in IMAGE_CANDIDATES if topics.get(t) in (IMAGE, COMPRESSED)]
        others = sorted(t for t, ty in topics.items() if ty in (IMAGE, COMPRESSED) and "ground_truth" not in t)
        if found:
            image = found[0]
        elif len(others) == 1:
            image = others[0]
        else:
            raise ValueError(f"bag {bag}: cannot tell the camera topic among {others or 'no image topics'}; "
                             "set image_topic:=")
    if image not in topics:
        raise ValueError(f"bag {bag}: topic {image!r} not in the bag ({', '.join(sorted(topics))})")
    if topics[image] not in (IMAGE, COMPRESSED):
        raise ValueError(f"bag {bag}: topic {image!r} is {topics[image]}, not an Image or CompressedImage")
    compressed = topics[image] == COMPRESSED
    ns = values["namespace"].strip()
    method = carla_launch.method_of(values)
    adapt_values = {"image_topic": image, "namespace": ns, "params_file": values["params_file"], "task": "",
                    "method": values["method"], "device": values["device"], "model": values["model"],
                    "use_sim_time": "true", "compressed": "true" if compressed else "false",
                    "log_level": values["log_level"], "quality": values.get("quality", ""),
                    "guard": values.get("guard", "")}
    actions = [dds, {"kind": "lifecycle_node", **carla_launch._adapt_launch().node_settings(adapt_values)}]
    evaluator = values["evaluator"].strip()
    has_truth = topics.get(TRUTH) == IMAGE
    if evaluator == "true" and not has_truth:
        raise ValueError(f"bag {bag}: evaluator:=true but the bag has no ground truth on {TRUTH}")
    if evaluator == "true" or (evaluator == "auto" and has_truth):
        remaps = [("camera/ground_truth/class_ids", TRUTH)]
        if topics.get(WEATHER) == "std_msgs/msg/String":
            remaps.append(("weather", WEATHER))
        actions.append({"kind": "node", "package": PACKAGE, "executable": "evaluator", "name": "evaluator",
                        "namespace": ns, "output": "screen", "remappings": remaps,
                        "parameters": [values["weather_params_file"],
                                       {"use_sim_time": True, "prediction_topics": ["class_ids"],
                                        "labels": [method], "prefix": f"{method}_",
                                        "output_dir": values["output_dir"],
                                        "title": f"{Path(bag).name}: {method}"}],
                        "ros_arguments": ["--log-level", values["log_level"]]})
    cmd = ["ros2", "bag", "play", str(Path(bag).expanduser()), "--clock", "--rate", str(rate)]
    if values["qos_file"].strip():
        cmd += ["--qos-profile-overrides-path", values["qos_file"].strip()]
    actions.append({"kind": "play", "cmd": cmd, "delay": delay, "drain": drain})
    return actions


def to_actions(items: list) -> list:
    from launch.actions import ExecuteProcess, RegisterEventHandler, Shutdown, TimerAction
    from launch.event_handlers import OnProcessExit

    carla_launch = _sibling("carla_weather.launch.py", "tta_carla_weather_launch")
    out = []
    for item in items:
        if item["kind"] != "play":
            out += carla_launch.to_actions([item])
            continue
        play = ExecuteProcess(cmd=item["cmd"], output="screen", name="bag_play")
        out.append(TimerAction(period=item["delay"], actions=[play]))
        if item["drain"] >= 0:
            out.append(RegisterEventHandler(OnProcessExit(
                target_action=play,
                on_exit=[TimerAction(period=item["drain"], actions=[Shutdown(reason="bag played")])])))
    return out


def _setup(context, *args, **kwargs):
    from launch.substitutions import LaunchConfiguration

    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    return to_actions(plan(values, environ=context.environment))


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    actions = []
    for name, (default, description, choices) in ARGUMENTS.items():
        extra = {"choices": choices} if choices else {}
        if default is not None:
            extra["default_value"] = default
        actions.append(DeclareLaunchArgument(name, description=description, **extra))
    actions.append(OpaqueFunction(function=_setup))
    return LaunchDescription(actions)
