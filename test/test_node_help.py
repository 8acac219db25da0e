"""``-h``/``--help`` of every executable (tta_node, weather_camera, carla_weather, evaluator): the
parameters from the tables that declare them, exit 0, and no rclpy.init (no node, no DDS participant);
``--help`` only counts among the user's own arguments, not inside ``--ros-args``. Plus arguments rcl
cannot parse: one line and exit 2 instead of a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_ros_helpers as H  # noqa: E402

H.require_rclpy()

from tta_perception.ros.spin import help_requested, user_args  # noqa: E402

EXECUTABLES = ("tta_node", "weather_camera", "carla_weather", "evaluator")


def _param_names(exe: str) -> list[str]:
    if exe == "tta_node":
        from tta_perception.runtime.params import SPECS

        return [s.name for s in SPECS]
    import importlib

    return list(importlib.import_module(f"tta_perception.ros.{exe}").PARAMS)


def _env() -> dict[str, str]:
    """This checkout first on PYTHONPATH (the console scripts import the package from it)."""
    env = {k: v for k, v in os.environ.items() if k != "TTA_PERCEPTION_PYTHON"}
    env["PYTHONPATH"] = os.pathsep.join([str(H.REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _command(how: str, exe: str) -> list[str]:
    if how == "console script":  # what pip installed next to the interpreter (setup.py console_scripts)
        script = Path(sys.executable).parent / exe
        if not script.is_file():
            pytest.skip(f"no console script {script} (package not installed in this environment)")
        return [str(script)]
    if how == "launcher":  # ros/bin/<exe>, what `ros2 run` finds in lib/tta_perception
        return ["sh", str(H.REPO / "tta_perception" / "ros" / "bin" / exe)]
    return [sys.executable, "-m", f"tta_perception.ros.{exe}"]


@pytest.mark.parametrize("exe", EXECUTABLES)
@pytest.mark.parametrize("how, flag", [("console script", "--help"), ("module", "-h"), ("launcher", "--help")])
def test_help_prints_every_parameter_and_exits_0(exe, how, flag):
    env = _env()
    if how == "launcher":
        env["TTA_PERCEPTION_PYTHON"] = sys.executable
    done = subprocess.run(_command(how, exe) + [flag], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith(f"usage: ros2 run tta_perception {exe} [--ros-args -p name:=value ... -r from:=to]")
    for name in _param_names(exe):
        assert f"\n  {name} (" in out, f"{exe} --help does not list {name}"
    assert "topics out:" in out
    # no node: nothing logged (a node logs "[INFO] [...] [<name>]: ..." lines), nothing on stderr
    assert done.stderr == "", done.stderr[-3000:]
    assert "[INFO]" not in out and "[WARN]" not in out and "[ERROR]" not in out


def test_tta_node_help_shows_types_defaults_and_when():
    done = subprocess.run(_command("module", "tta_node") + ["--help"], capture_output=True, text=True, env=_env(),
                          timeout=60)
    out = done.stdout
    assert "  method (str, default 'dplot') [reload]" in out
    assert "  max_memory_mb (int, default 2048) [startup, read-only]" in out
    assert "  input_size (int_array, default [0, 0]) [reload]" in out
    assert "One of: auto, segmentation, classification." in " ".join(out.split())  # task's choices (wrapped)
    assert "image/compressed" in out and "~/save" in out


def test_help_never_initialises_rclpy():
    """In a separate process only: rclpy.init / a context / a node made at all fails loudly; help
    still returns 0 for every executable, and a ``--help`` that is a ROS value does reach rclpy.init."""
    script = textwrap.dedent("""
        import contextlib, importlib, io, sys
        import rclpy, rclpy.context, rclpy.node

        class Started(Exception):
            pass

        def refuse(*args, **kwargs):
            raise Started("rclpy was initialised")

        rclpy.init = refuse
        rclpy.context.Context.init = refuse
        rclpy.node.Node.__init__ = refuse
        for exe in sys.argv[1:]:
            main = importlib.import_module("tta_perception.ros." + exe).main
            for argv in ([exe, "--help"], [exe, "-h"], [exe, "-h", "--ros-args", "-p", "x:=1"],
                         [exe, "--ros-args", "-r", "a:=b", "--", "--help"]):
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    assert main(argv) == 0, argv
                assert out.getvalue().startswith("usage: ros2 run tta_perception " + exe), argv
            for argv in ([exe, "--ros-args", "-p", "model:=--help"], [exe, "--ros-args", "--help"]):
                try:
                    main(argv)
                except Started:
                    continue
                raise AssertionError(f"{argv}: help instead of starting")
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script, *EXECUTABLES], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-2000:] + done.stderr[-3000:]


@pytest.mark.parametrize("argv, wanted", [
    (["tta_node", "--help"], True),
    (["tta_node", "-h"], True),
    (["tta_node", "--verbose", "-h", "--ros-args", "-p", "a:=1"], True),
    (["tta_node", "--ros-args", "-p", "model:=--help"], False),  # a parameter value
    (["tta_node", "--ros-args", "-p", "model:=x", "-r", "__node:=-h"], False),
    (["tta_node", "--ros-args", "--help"], False),  # rcl's, inside the ROS arguments
    (["tta_node", "--ros-args", "-p", "a:=1", "--", "--help"], True),  # `--` ends the ROS arguments
    (["--help"], False),  # argv[0] is the program
    ([], False),
    (["tta_node", "--helpful"], False),
])
def test_help_is_recognised_only_among_the_users_own_arguments(argv, wanted):
    assert help_requested(argv) is wanted


def test_user_args_leave_out_every_ros_block():
    argv = ["x", "a", "--ros-args", "-p", "b:=1", "--", "c", "--ros-args", "-r", "d:=e"]
    assert user_args(argv) == ["a", "c"]


@pytest.mark.parametrize("exe", ["tta_node", "weather_camera"])
def test_arguments_rcl_cannot_parse_are_one_line_and_exit_2(exe, tmp_path):
    """Before: rclpy.init's RCLError traceback."""
    done = subprocess.run(_command("module", exe) + ["--ros-args", "-p", "bad"], capture_output=True, text=True,
                          env=_env(), timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"[{exe}] bad arguments:" in done.stderr and "'-p bad'" in done.stderr and f"{exe} --help" in done.stderr
