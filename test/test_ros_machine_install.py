"""The README's ROS-machine install keeps the NumPy that the distro put there.

ROS's compiled Python modules (cv_bridge among them) are built against the distro's NumPy: 1.21.5 on
Ubuntu 22.04 (Humble, Python 3.10), 1.26.4 on 24.04 (Jazzy, Kilted, Python 3.12). A plain
``pip install -r requirements.txt`` there resolves NumPy 2 (the newest opencv-python requires it) and the
copy pip installs shadows the distro's. The documented command pins NumPy to the installed version, so
pip picks releases that work with it instead.

The command is the one in the README, in the code block after ``<!-- ros-machine-install -->``: run here
with ``pip --dry-run --report`` in a throwaway venv of that Python with the distro's NumPy installed
first (nothing is downloaded but metadata and NumPy; the environment running the tests is not touched).
``--user`` and ``--break-system-packages`` go: they say where pip installs (pip refuses ``--user`` in a
venv), not what. Marked ``network`` (PyPI): ``pytest -m "not network"`` deselects it; it skips where
the Python version or PyPI is missing."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MARKER = "<!-- ros-machine-install -->"
WHERE_NOT_WHAT = ("--user", "--break-system-packages")
DISTROS = [  # (Python, the distro's NumPy)
    pytest.param("3.10", "1.21.5", id="humble-py3.10-numpy1.21.5"),
    pytest.param("3.12", "1.26.4", id="jazzy-kilted-py3.12-numpy1.26.4"),
]


def readme_install_command() -> str:
    """The one `pip install` line of the README's ROS-machine block (continuation lines joined)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert MARKER in text, f"README.md lost the {MARKER} marker before the ROS-machine install block"
    block = re.search(r"```[a-z]*\n(.*?)```", text[text.index(MARKER):], re.S)
    assert block, f"no code block after {MARKER} in README.md"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    pip = [line.strip() for line in lines if re.search(r"\bpip\b.*\binstall\b", line)
           and not line.lstrip().startswith("#")]
    assert len(pip) == 1, f"expected one pip install line after {MARKER}, found {pip}"
    return pip[0]


def test_readme_names_the_ros_machine_install():
    """Offline: the block is there, installs requirements.txt and pins NumPy to the installed one."""
    command = readme_install_command()
    assert "-r requirements.txt" in command
    assert re.search(r"numpy==\$\(python3 -c .*numpy\.__version__", command), command


def _python(version: str) -> str | None:
    """An interpreter of that version that can make venvs: on PATH or, as pyenv installs them, under
    $PYENV_ROOT/versions (pyenv's shim on PATH fails when another version is selected)."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which(f"python{version}"),
                  *sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"), reverse=True)]
    for exe in filter(None, candidates):
        done = subprocess.run([exe, "-c", "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=30)
        if done.returncode == 0 and done.stdout.strip() == version:
            return exe
    return None


def _pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/numpy/", timeout=10) as reply:
            return reply.status == 200
    except OSError:
        return False


def _run(cmd, env, timeout, what, **kwargs) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: no result after {timeout} s")
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


@pytest.mark.network
@pytest.mark.parametrize("python_version, distro_numpy", DISTROS)
def test_ros_machine_install_keeps_the_distro_numpy(python_version, distro_numpy, tmp_path):
    command = readme_install_command()
    python = _python(python_version)
    if python is None:
        pytest.skip(f"python{python_version} with venv/ensurepip not found (PATH, pyenv)")
    if not _pypi_reachable():
        pytest.skip("PyPI (https://pypi.org) not reachable")

    # the venv's python3 is the `python3` of the command; pip's own cache and configuration stay
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_USER", "PIP_TARGET", "PIP_PREFIX")}
    venv = tmp_path / "venv"
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    made = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True, env=env, timeout=120)
    if made.returncode != 0:  # e.g. Debian/Ubuntu without python3.x-venv
        pytest.skip(f"{python} -m venv failed: {made.stderr.strip()[-300:]}")
    py = str(venv / "bin" / "python")
    # --dry-run --report came with pip 22.2 (a Python 3.10 venv on Ubuntu 22.04 brings pip 22.0)
    pip_version = _run([py, "-c", "import pip; print(pip.__version__)"], env, 30, "pip version").stdout
    if tuple(int(part) for part in re.findall(r"\d+", pip_version)[:2]) < (22, 2):
        _run([py, "-m", "pip", "install", "-q", "pip>=23"], env, 120, "pip upgrade")
    _run([py, "-m", "pip", "install", "-q", f"numpy=={distro_numpy}"], env, 120, "the distro's NumPy")

    report = tmp_path / "report.json"
    for flag in WHERE_NOT_WHAT:
        command = re.sub(rf"\s{re.escape(flag)}(?=\s|$)", "", command)
    dry = re.sub(r"\bpip install\b", f"pip install --dry-run --quiet --report '{report}'", command, count=1)
    assert dry != command, command
    _run(["bash", "-c", dry], env, 240, f"the README's command ({dry})", cwd=REPO)

    planned = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "numpy" not in planned, f"pip would install NumPy {planned.get('numpy')} over {distro_numpy}"
    assert {"torch", "opencv-python", "corrupt-tta", "rosbags"} <= planned.keys(), planned  # it resolved
    kept = _run([py, "-c", "import numpy; print(numpy.__version__)"], env, 60, "numpy").stdout.strip()
    assert kept == distro_numpy
