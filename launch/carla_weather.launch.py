"""Weather in the loop: the adaptation node under changing weather, simulated or from CARLA.

    # anywhere: the embedded world as the camera, tta_node, and the evaluator scoring it per phase
    ros2 launch tta_perception carla_weather.launch.py                      # mode:=synthetic
    # the 120-s dynamic cycle in 60 s of camera time (600 frames at 10 Hz, every 2nd schedule frame);
    # the camera starts once tta_node listens, the launch ends after 90 s
    ros2 launch tta_perception carla_weather.launch.py method:=source rate:=10 frame_stride:=2 \
        max_frames:=600 duration:=90
    # a CARLA server: carla_weather drives its weather, tta_node reads the bridge's camera
    ros2 launch tta_perception carla_weather.launch.py mode:=carla host:=localhost port:=2000

``mode:=synthetic`` (default): ``weather_camera`` publishes the embedded world under ``schedule``,
``tta_node`` adapts on it, ``evaluator`` writes ``<output_dir>/<method>_{frames,domains}.csv``,
``..._summary.json`` and ``..._plot.png`` at shutdown (``duration:=N`` stops the launch after N s).

``cameras:=N`` (synthetic): the car's first N views (1..4: front, rear, narrow, wide; or view names,
``cameras:=front,wide``): ``weather_camera`` publishes ``<view>/image_raw`` and
``<view>/ground_truth/class_ids`` with one stamp, one ``tta_node`` adapts one model on all of them
(its ``<view>/image`` remapped to ``<view>/image_raw``, outputs under ``<view>/``), and the evaluator
scores each camera and all together (``<method>_<view>_frames.csv``, ``<method>_summary.json``).

``mode:=carla``: ``carla_weather`` applies ``schedule`` to the server with ``world.set_weather`` on
simulation time, ``tta_node`` listens to ``/carla/ego_vehicle/rgb_front/image`` (bgra8) with
``use_sim_time:=true``. The carla-ros-bridge (with its example ego vehicle, which carries the
``rgb_front`` camera) is included when its package is installed (``bridge:=auto``); otherwise start it
yourself. The evaluator runs in CARLA mode when ``truth_topic`` names the bridge's semantic camera
(e.g. ``/carla/ego_vehicle/semantic_segmentation_front/image``): its CityScapes palette colours are
mapped to class ids (evaluator ``truth_encoding: carla_palette``).

``dds_profile:=default`` gives every process this launch starts (the camera and the bridge, which
publish the large frames, above all) the DDS profile shipped for large frames; ``none`` or a path as in
``adapt.launch.py``.

``launch``/``launch_ros`` are imported inside the functions, so ``plan`` (the pure argument handling)
is unit-tested where they are absent; the tta_node settings come from ``adapt.launch.py``'s
``node_settings``, so both launch files configure the node the same way.
"""
import importlib.util
import math
from pathlib import Path

PACKAGE = "tta_perception"
HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "config"  # installed (share/tta_perception/config) and source layouts alike
DEFAULT_PARAMS = str(CONFIG / "adapt.yaml")
DEFAULT_WEATHER_PARAMS = str(CONFIG / "weather_loop.yaml")
CARLA_IMAGE = "/carla/ego_vehicle/rgb_front/image"
SYNTHETIC_IMAGE = "camera/image_raw"  # relative: follows namespace:=
TRUTH_TOPIC = "camera/ground_truth/class_ids"  # the evaluator's (tta_perception.runtime.messages)
BRIDGE_PACKAGE = "carla_ros_bridge"
BRIDGE_LAUNCHES = ("carla_ros_bridge_with_example_ego_vehicle.launch.py", "carla_ros_bridge.launch.py")

# name -> (default, description, choices or None); "" keeps the value of the parameter files
ARGUMENTS = {
    "mode": ("synthetic", "synthetic: the embedded world stands in for CARLA; carla: a CARLA server.",
             ["synthetic", "carla"]),
    "schedule": ("dynamic", "Weather schedule: shipped sequence name or schedule YAML path (both modes).",
                 None),
    "method": ("", "Adaptation method (source, norm, tent, eata, sar, cotta, rmt, dplot); '' = params_file.",
               None),
    "device": ("", "auto, cpu, cuda or cuda:N; '' = params_file.", None),
    "model": ("", "Embedded model name or checkpoint path; '' = params_file.", None),
    "quality": ("", "tta_node: publish each output's quality estimate (quality); '' = params_file.",
                ["", "true", "false"]),
    "guard": ("", "tta_node: the collapse guard (off by default); '' = params_file.", ["", "true", "false"]),
    "params_file": (DEFAULT_PARAMS, "tta_node parameter file.", None),
    "weather_params_file": (DEFAULT_WEATHER_PARAMS, "weather_camera / carla_weather / evaluator parameters.",
                            None),
    "namespace": ("", "Namespace of all nodes and topics.", None),
    "cameras": ("1", "synthetic: cameras of the car, a count 1..4 (front, rear, narrow, wide in that order) or "
                "view names (front,wide); 1 = the single camera on camera/image_raw.", None),
    "image_topic": ("", f"Camera topic; '' = {SYNTHETIC_IMAGE} (synthetic) or {CARLA_IMAGE} (carla).", None),
    "use_sim_time": ("", "'' = false (synthetic) / true (carla).", ["", "true", "false"]),
    "evaluator": ("", "Run the evaluator; '' = true (synthetic) / true when truth_topic is set (carla).",
                  ["", "true", "false"]),
    "truth_topic": ("", "carla mode: the bridge's semantic camera topic (CityScapes palette, e.g. "
                    "/carla/ego_vehicle/semantic_segmentation_front/image) the evaluator scores against; "
                    "synthetic: '' = the camera's ground truth.", None),
    "output_dir": ("runs/weather_loop", "Evaluator output folder.", None),
    "duration": ("0", "Shut the launch down after this many seconds (0: run until Ctrl-C).", None),
    # synthetic camera
    "rate": ("", "Camera frames per second; '' = weather_params_file (schedule fps / frame_stride).", None),
    "frame_stride": ("", "Schedule frames per published frame (fast-forward); '' = weather_params_file.",
                     None),
    "encoding": ("", "Camera encoding (rgb8, bgr8, rgba8, bgra8, mono8); '' = weather_params_file.", None),
    "max_frames": ("", "Frames the camera publishes before it stops (0: no limit); '' = weather_params_file.",
                   None),
    "width": ("", "Camera width; '' = weather_params_file.", None),
    "height": ("", "Camera height; '' = weather_params_file.", None),
    # CARLA
    "host": ("localhost", "CARLA server host (carla mode).", None),
    "port": ("2000", "CARLA server port (carla mode).", None),
    "timeout": ("10.0", "Seconds per connection attempt (carla mode).", None),
    "bridge": ("auto", "Include the carla-ros-bridge launch: auto (when installed), true, false.",
               ["auto", "true", "false"]),
    "log_level": ("info", "Log level of the nodes.", ["debug", "info", "warn", "error", "fatal"]),
    "dds_profile": ("default", "DDS profile for the processes this launch starts (the camera above all): "
                    "default (the one shipped for large frames, unless the environment names one), none, "
                    "or the path of a Fast DDS or Cyclone DDS XML file.", None),
}


def _adapt_launch():
    spec = importlib.util.spec_from_file_location("tta_adapt_launch", HERE / "adapt.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # pure at import time (no launch import)
    return module


def _bool(text: str, default: bool) -> bool:
    text = (text or "").strip().lower()
    return default if not text else text == "true"


def number(values: dict, key: str, cast=float):
    """The launch argument ``key`` as an int (``cast=int``) or a finite float; else a ValueError that
    names the argument and its value (launch prints it as the one line of the failure)."""
    text = str(values[key]).strip()
    kind = "an integer" if cast is int else "a number"
    try:
        value = cast(text)
    except ValueError:
        raise ValueError(f"launch argument '{key}' must be {kind}, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"launch argument '{key}' must be a finite number, got {text!r}")
    return value


def method_of(values: dict) -> str:
    """The method the node will run: the argument, else the params file's (for file names/labels)."""
    if values.get("method", "").strip():
        return values["method"].strip()
    try:
        import yaml

        doc = yaml.safe_load(Path(values["params_file"]).read_text()) or {}
        for entry in doc.values():
            method = (entry or {}).get("ros__parameters", {}).get("method")
            if method:
                return str(method)
    except Exception:  # unreadable file: the node will say so itself
        pass
    return "tta_node"


def find_bridge_launch(find_share=None):
    """Path of the carla-ros-bridge launch file, or None when the bridge is not installed."""
    if find_share is None:
        def find_share(package):
            from ament_index_python.packages import get_package_share_directory

            return get_package_share_directory(package)
    try:
        share = Path(find_share(BRIDGE_PACKAGE))
    except Exception:  # PackageNotFoundError, or no ament_index at all
        return None
    for name in BRIDGE_LAUNCHES:
        if (share / "launch" / name).is_file():
            return str(share / "launch" / name)
    return None


def views_of(values: dict, carla: bool) -> list:
    """The views of ``cameras:=`` (a count or names); [] for the single camera."""
    from tta_perception.world.views import VIEWS, views_for

    text = str(values.get("cameras", "1")).strip() or "1"
    if text.isdigit():
        try:
            views = views_for(int(text))
        except ValueError as err:
            raise ValueError(f"launch argument 'cameras': {err}") from None
        views = [] if views == ["front"] else views
    else:
        views = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in views if v not in VIEWS]
        if bad or len(set(views)) != len(views):
            raise ValueError(f"launch argument 'cameras' must be a count 1..4 or distinct views of "
                             f"{', '.join(VIEWS)}, got {text!r}")
    if views and carla:
        raise ValueError("launch argument 'cameras' is for mode:=synthetic (in CARLA, use adapt.launch.py "
                         "cameras:= image_topics:= with the bridge's cameras)")
    if views and values["image_topic"].strip():
        raise ValueError("cameras:= publishes <view>/image_raw per view; leave image_topic empty")
    return views


def plan(values: dict, find_share=None, environ=None) -> list:
    """Launch-argument strings -> the actions to run, as plain dicts (pure, unit-tested).

    Each item has ``kind`` (``dds_profile``, ``node``, ``lifecycle_node``, ``include``,
    ``shutdown_after``, ``log``) and the keyword arguments of that action. ``dds_profile`` comes first,
    so every process after it (the bridge's too) starts with it; ``environ``: the launch's environment.
    """
    dds = {"kind": "dds_profile",
           **_adapt_launch().dds_settings(values.get("dds_profile", "default"), environ)}
    mode = values["mode"].strip()
    if mode not in ("synthetic", "carla"):
        raise ValueError(f"launch argument 'mode' must be synthetic or carla, got {mode!r}")
    carla = mode == "carla"
    sim_time = _bool(values["use_sim_time"], carla)
    ns = values["namespace"].strip()
    image = values["image_topic"].strip() or (CARLA_IMAGE if carla else SYNTHETIC_IMAGE)
    method = method_of(values)
    views = views_of(values, carla)
    weather_file = values["weather_params_file"]
    log = ["--log-level", values["log_level"]]
    actions = []

    if carla:
        bridge = values["bridge"].strip()
        path = find_bridge_launch(find_share) if bridge in ("auto", "true") else None
        if path:
            actions.append({"kind": "include", "path": path,
                            "launch_arguments": {"host": values["host"], "port": values["port"],
                                                 "timeout": values["timeout"]}})
        elif bridge == "true":
            raise ValueError("bridge:=true but the carla_ros_bridge package is not installed "
                             "(source the carla-ros-bridge workspace, or start the bridge yourself)")
        elif bridge == "auto":
            actions.append({"kind": "log", "msg": "carla_ros_bridge not found: start the bridge yourself "
                            f"(its camera must publish {image})"})
        actions.append({"kind": "node", "package": PACKAGE, "executable": "carla_weather",
                        "name": "carla_weather", "namespace": ns, "output": "screen",
                        "parameters": [weather_file, {"use_sim_time": sim_time,
                                                      "schedule": values["schedule"],
                                                      "host": values["host"],
                                                      "port": number(values, "port", int),
                                                      "timeout": number(values, "timeout")}],
                        "ros_arguments": log})
    else:
        camera = {"use_sim_time": sim_time, "schedule": values["schedule"]}
        for key, cast in (("rate", float), ("frame_stride", int), ("max_frames", int), ("encoding", str),
                          ("width", int), ("height", int)):
            if values[key].strip():
                camera[key] = values[key].strip() if cast is str else number(values, key, cast)
        # frames published before tta_node has loaded (seconds) or the evaluator listens would be lost
        camera["wait_for_subscribers"] = 1
        camera["wait_for_truth_subscribers"] = 1 if _bool(values["evaluator"], True) else 0
        if views:
            camera["cameras"] = views
        actions.append({"kind": "node", "package": PACKAGE, "executable": "weather_camera",
                        "name": "weather_camera", "namespace": ns, "output": "screen",
                        "parameters": [weather_file, camera],
                        "remappings": [] if image == SYNTHETIC_IMAGE else [(SYNTHETIC_IMAGE, image)],
                        "ros_arguments": log})

    adapt_values = {"image_topic": image, "namespace": ns, "params_file": values["params_file"], "task": "",
                    "method": values["method"], "device": values["device"], "model": values["model"],
                    "use_sim_time": "true" if sim_time else "false", "compressed": "",
                    "log_level": values["log_level"], "quality": values.get("quality", ""),
                    "guard": values.get("guard", "")}
    if views:  # one model, each view's <view>/image remapped to the camera's <view>/image_raw
        adapt_values.update(cameras=",".join(views), image_topics=",".join(f"{v}/image_raw" for v in views))
    tta = _adapt_launch().node_settings(adapt_values)  # a relative image topic resolves in namespace:=
    actions.append({"kind": "lifecycle_node", **tta})

    truth = values.get("truth_topic", "").strip()
    if _bool(values["evaluator"], (not carla) or bool(truth)):
        if carla and not truth:
            raise ValueError("evaluator:=true in carla mode needs truth_topic:=<the bridge's semantic "
                             "camera topic> (e.g. /carla/ego_vehicle/semantic_segmentation_front/image)")
        settings = {"use_sim_time": sim_time, "prediction_topics": ["class_ids"], "labels": [method],
                    "prefix": f"{method}_", "output_dir": values["output_dir"],
                    "title": f"{values['schedule']}: {method}"}
        if carla:
            settings["truth_encoding"] = "carla_palette"
        if views:
            settings["cameras"] = views
        actions.append({"kind": "node", "package": PACKAGE, "executable": "evaluator", "name": "evaluator",
                        "namespace": ns, "output": "screen", "parameters": [weather_file, settings],
                        "remappings": [(TRUTH_TOPIC, truth)] if truth else [],
                        "ros_arguments": log})
    duration = number(values, "duration") if values["duration"].strip() else 0.0
    if duration < 0:
        raise ValueError(f"launch argument 'duration' must be >= 0, got {duration}")
    if duration > 0:
        actions.append({"kind": "shutdown_after", "period": duration,
                        "reason": f"duration:={duration:g} s elapsed"})
    return [dds] + actions


def to_actions(items: list) -> list:
    """The plan as launch / launch_ros actions (shared with replay.launch.py)."""
    from launch.actions import IncludeLaunchDescription, LogInfo, Shutdown, TimerAction
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch_ros.actions import LifecycleNode, Node

    out = []
    for item in items:
        item = dict(item)
        kind = item.pop("kind")
        if kind == "dds_profile":
            out += _adapt_launch().dds_actions(item)
        elif kind == "node":
            out.append(Node(**item))
        elif kind == "lifecycle_node":
            out.append(LifecycleNode(**item))
        elif kind == "include":
            out.append(IncludeLaunchDescription(PythonLaunchDescriptionSource(item["path"]),
                                                launch_arguments=list(item["launch_arguments"].items())))
        elif kind == "shutdown_after":
            out.append(TimerAction(period=item["period"], actions=[Shutdown(reason=item["reason"])]))
        elif kind == "log":
            out.append(LogInfo(msg=item["msg"]))
        else:
            raise ValueError(f"unknown action kind {kind!r}")
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
        actions.append(DeclareLaunchArgument(name, default_value=default, description=description, **extra))
    actions.append(OpaqueFunction(function=_setup))
    return LaunchDescription(actions)
