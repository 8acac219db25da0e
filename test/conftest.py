"""Shared pytest set-up (keep it generic; fixtures of one area belong in that area's test files).

ROS 2 isolation, set before any test imports rclpy (DDS reads these when a context starts):
- ``ROS_DOMAIN_ID`` unique per test session (from the pid, always overridden), so parallel sessions
  and a robot on the same network do not see each other's topics; node subprocesses inherit it;
- discovery limited to this machine, logs and ``ROS_HOME`` in a temporary folder.

The ROS 2 wheels from PyPI set ``LD_LIBRARY_PATH`` by re-executing the interpreter once at start-up
(``ros_wheels_bootstrapper.pth`` in the venv); that happens before pytest starts, so nothing is needed
here as long as the venv's python runs pytest (``make test``).
"""
import atexit
import os
import shutil
import tempfile

os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)  # 1..100: valid for Fast DDS on Linux
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
_ROS_TMP = tempfile.mkdtemp(prefix="tta_pytest_ros_")
os.environ.setdefault("ROS_LOG_DIR", os.path.join(_ROS_TMP, "log"))
os.environ.setdefault("ROS_HOME", os.path.join(_ROS_TMP, "home"))
atexit.register(shutil.rmtree, _ROS_TMP, ignore_errors=True)


def pytest_configure(config):
    # deselect with `pytest -m "not network"`; such tests skip by themselves where PyPI is not reachable
    config.addinivalue_line("markers", "network: needs PyPI (pip resolves real releases)")
