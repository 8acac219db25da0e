"""Launch the tta_node lifecycle node on a camera topic.

    ros2 launch tta_perception adapt.launch.py image_topic:=/carla/ego_vehicle/rgb_front/image
    ros2 launch tta_perception adapt.launch.py image_topic:=/camera/image_raw compressed:=true \
        method:=tent device:=cpu namespace:=front use_sim_time:=true

Several cameras, one adapted model (Autoware's camera topics):

    ros2 launch tta_perception adapt.launch.py cameras:=front,rear,left,right \
        image_topics:=/sensing/camera/camera0/image_rect_color,/sensing/camera/camera1/image_rect_color,\
/sensing/camera/camera2/image_rect_color,/sensing/camera/camera3/image_rect_color

Each camera C reads ``C/image`` (remapped to its entry of ``image_topics``, in the same order) and
publishes under ``C/`` (``front/class_ids``, ...); without ``image_topics`` the topics stay relative.

Large frames (docs/node.md, "Large frames and the DDS profile"): ``dds_profile:=default`` (the
default) gives the processes this launch starts the DDS profile shipped for them (Fast DDS: a
shared-memory segment for 1920x1080 rgb8 frames, larger socket buffers; Cyclone DDS: larger socket
buffers), unless the environment already names a profile; ``dds_profile:=none`` sets nothing,
``dds_profile:=<path>`` sets that XML file:

    ros2 launch tta_perception adapt.launch.py dds_profile:=/etc/dds/my_profile.xml

Empty ``task``/``method``/``device``/``model``/``compressed``/``quality``/``guard`` keep the value of
``params_file`` (default: the installed config/adapt.yaml). ``quality:=false`` stops the per-frame
quality estimate, ``guard:=true`` turns the collapse guard on (docs/node.md). The node configures and
activates by itself (``autostart``); it is a launch_ros ``LifecycleNode`` so lifecycle events and
``ros2 lifecycle`` work.

The ``launch``/``launch_ros`` imports are inside the functions so the argument handling
(``node_settings``) can be tested on machines without them (the ROS 2 wheels on PyPI lack launch).
"""
from pathlib import Path

PACKAGE = "tta_perception"
EXECUTABLE = "tta_node"
# Installed layout (share/tta_perception/{launch,config}) and source layout (launch/, config/) alike.
DEFAULT_PARAMS = str(Path(__file__).resolve().parent.parent / "config" / "adapt.yaml")

# name -> (default, description, choices or None)
ARGUMENTS = {
    "image_topic": ("/camera/image_raw", "Input sensor_msgs/Image topic (with compressed:=true the "
                    "CompressedImage is read from <image_topic>/compressed).", None),
    "namespace": ("", "Namespace of the node and its outputs.", None),
    "params_file": (DEFAULT_PARAMS, "Parameter file (see config/adapt.yaml).", None),
    "task": ("", "Override: auto, segmentation or classification.",
             ["", "auto", "segmentation", "classification"]),
    "method": ("", "Override: adaptation method (source, norm, tent, eata, sar, cotta, rmt, dplot).",
               None),
    "device": ("", "Override: auto, cpu, cuda or cuda:N.", None),
    "model": ("", "Override: embedded model name or checkpoint path.", None),
    "use_sim_time": ("false", "Use /clock (bag replay with --clock, CARLA bridge).", ["true", "false"]),
    "compressed": ("", "Override: subscribe to CompressedImage.", ["", "true", "false"]),
    "quality": ("", "Override: publish each output's label-free quality estimate on quality (per camera "
                "C/quality; on by default).", ["", "true", "false"]),
    "guard": ("", "Override: the collapse guard (off by default; docs/node.md).", ["", "true", "false"]),
    "log_level": ("info", "Node log level.", ["debug", "info", "warn", "error", "fatal"]),
    "cameras": ("", "Several cameras, one adapted model: comma-separated names (front,rear,...); each "
                "reads <name>/image and publishes under <name>/. Empty: one camera on image_topic.", None),
    "image_topics": ("", "With cameras: the input topic of each camera, comma-separated in the same "
                     "order. Empty: <namespace>/<camera>/image.", None),
    "dds_profile": ("default", "DDS profile for the processes this launch starts: default (the one shipped "
                    "for large frames, unless the environment names one), none, or the path of a Fast DDS "
                    "or Cyclone DDS XML file.", None),
}


#: true/false overrides of node parameters; empty keeps the parameter file's value
BOOL_OVERRIDES = ("quality", "guard")


def _list(text: str) -> list:
    return [item.strip() for item in text.split(",") if item.strip()]


def _remaps(local: str, topic: str) -> list:
    """``local/image`` (and its compressed twin) onto ``topic``."""
    topic = topic.strip().rstrip("/")
    compressed = topic if topic.endswith("/compressed") else topic + "/compressed"
    base = topic[: -len("/compressed")] if topic.endswith("/compressed") else topic
    prefix = f"{local}/" if local else ""
    return [(f"{prefix}image", base), (f"{prefix}image/compressed", compressed)]


def node_settings(values: dict) -> dict:
    """Launch-argument strings -> keyword arguments of the node action (pure, unit-tested)."""
    overrides = {"use_sim_time": values["use_sim_time"].strip().lower() == "true"}
    for key in ("task", "method", "device", "model"):
        if values[key].strip():
            overrides[key] = values[key].strip()
    if values["compressed"].strip():
        overrides["compressed"] = values["compressed"].strip().lower() == "true"
    for key in BOOL_OVERRIDES:  # optional keys: the other launch files pass them when they have them
        text = str(values.get(key, "")).strip().lower()
        if text:
            overrides[key] = text == "true"
    cameras, topics = _list(values.get("cameras", "")), _list(values.get("image_topics", ""))
    if topics and len(topics) != len(cameras):
        raise ValueError(f"image_topics names {len(topics)} topic(s) for {len(cameras)} camera(s) "
                         f"({', '.join(cameras) or 'cameras is empty'}): give one per camera, in the same order")
    if cameras:
        overrides["cameras"] = cameras
        remappings = [r for cam, topic in zip(cameras, topics) for r in _remaps(cam, topic)]
    else:
        remappings = _remaps("", values["image_topic"])
    return {
        "package": PACKAGE,
        "executable": EXECUTABLE,
        "name": EXECUTABLE,
        "namespace": values["namespace"].strip(),
        "parameters": [values["params_file"], overrides],
        "remappings": remappings,
        "ros_arguments": ["--log-level", values["log_level"]],
        "output": "screen",
        "emulate_tty": True,
    }


def dds_settings(choice: str, environ=None) -> dict:
    """``dds_profile`` -> the variables to set for the processes started after it and the line to log
    (pure, unit-tested; ValueError in one line for a bad path). ``environ``: the launch's environment."""
    try:
        from tta_perception.ros.dds_profile import resolve
    except ImportError:  # this launch's Python does not see the package (e.g. a pip install in a venv)
        if str(choice).strip().lower() == "none":
            return {"env": {}, "msg": "dds_profile:=none: no DDS profile set"}
        return {"env": {}, "msg": "dds_profile: no DDS profile set, tta_perception is not importable by this "
                                  "launch's Python (set the profile's variable yourself, docs/node.md)"}
    resolved = resolve(choice, environ)
    return {"env": dict(resolved.env), "msg": resolved.note}


def dds_actions(settings: dict) -> list:
    """``dds_settings`` as launch actions: SetEnvironmentVariable changes the launch's environment, which
    every process started after it inherits (included launch files' too), then one log line."""
    from launch.actions import LogInfo, SetEnvironmentVariable

    return ([SetEnvironmentVariable(name, value) for name, value in settings["env"].items()]
            + [LogInfo(msg=settings["msg"])])


def _launch_node(context, *args, **kwargs):
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import LifecycleNode

    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    settings = node_settings(values)  # argument errors first
    return dds_actions(dds_settings(values["dds_profile"], context.environment)) + [LifecycleNode(**settings)]


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    actions = []
    for name, (default, description, choices) in ARGUMENTS.items():
        extra = {"choices": choices} if choices else {}
        actions.append(DeclareLaunchArgument(name, default_value=default, description=description,
                                             **extra))
    actions.append(OpaqueFunction(function=_launch_node))
    return LaunchDescription(actions)
