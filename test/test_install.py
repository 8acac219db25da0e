"""The install paths: a plain pip install and an editable one (plus ``install_ament``, as `make setup`
runs them) are found the way launch_ros finds packages; the build prints no setuptools warnings; one
OpenCV distribution. Every install goes into a temporary prefix from a copy of the tree (no network, the
venv's setuptools), never into the environment running the tests."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
LAUNCHERS = ("tta_node", "weather_camera", "carla_weather", "evaluator")
DDS_PROFILES = ("cyclonedds_large_frames.xml", "fastdds_large_frames.xml")
# setup.py's data_files: the ament index entry, package.xml, launch and config files, the launchers, the
# DDS profiles
ENTRIES = (2 + len(list((REPO / "launch").glob("*.launch.py"))) + len(list((REPO / "config").glob("*.yaml")))
           + len(list((REPO / "config" / "sequences").glob("*.yaml"))) + len(LAUNCHERS) + len(DDS_PROFILES))
SETUPTOOLS_WARNINGS = ("is absent from the `packages` configuration", "Unknown distribution option",
                       "as data is deprecated", "package init file")


def _copy_tree(dest: Path) -> Path:
    """What a source distribution holds (not the venv, caches or run outputs of the checkout)."""
    wanted = ["setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "package.xml", "README.md",
              "requirements.txt", "LICENSE", "resource", "launch", "config", "tta_perception"]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    dest.mkdir(parents=True)
    for name in wanted:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, dest / name, ignore=ignore, symlinks=True)
        elif path.is_file():
            shutil.copy2(path, dest / name)
    return dest


def _pip_install(prefix: Path, *args: str) -> str:
    """pip install into ``prefix`` offline with the venv's setuptools; --ignore-installed: never uninstall
    the copy in the environment running the tests. Returns pip's verbose output (the build's included)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("needs setuptools in the test environment (offline build)")
    cmd = [sys.executable, "-m", "pip", "install", "-v", "--no-deps", "--ignore-installed",
           "--no-build-isolation", "--no-index", "--prefix", str(prefix), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"pip install failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def _install_ament(prefix: Path, *args: str, pythonpath: Path = REPO):
    # that tree's tta_perception runs: on PYTHONPATH, and the working directory (which `-m` puts first on
    # sys.path) is not the checkout
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, "-m", "tta_perception.install_ament", "--prefix", str(prefix),
                           *args], capture_output=True, text=True, env=env, timeout=120, cwd=prefix.parent)


def _assert_found_by_name(prefix: Path, monkeypatch):
    """launch_ros's rules: the ament index, ``ros2 launch``'s walk of share/<package> (no directory
    links followed), ExecutableInPackage's which(executable, path=<prefix>/lib/<package>)."""
    pytest.importorskip("ament_index_python")
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    assert Path(get_package_prefix("tta_perception")) == prefix
    share = Path(get_package_share_directory("tta_perception"))
    assert share == prefix / "share" / "tta_perception"
    for launch in ("adapt.launch.py", "carla_weather.launch.py", "replay.launch.py"):
        found = [Path(root) / launch for root, _, files in os.walk(share) if launch in files]
        assert found == [share / "launch" / launch]
    assert (share / "config" / "adapt.yaml").is_file() and (share / "package.xml").is_file()
    assert (share / "config" / "sequences" / "dynamic.yaml").is_file()
    for name in DDS_PROFILES:  # for a camera driver's environment (docs/node.md)
        assert (share / "dds" / name).read_bytes() == (REPO / "tta_perception" / "ros" / "dds" / name).read_bytes()
    for exe in LAUNCHERS:
        path = shutil.which(exe, path=str(prefix / "lib" / "tta_perception"))
        assert path and os.access(path, os.X_OK), exe
    assert (prefix / "bin" / "tta_node").is_file()  # the console script, on PATH in a venv


# ------------------------------------------------------------------------------------ pip install .
@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel_install")
    src, prefix = _copy_tree(root / "src"), root / "prefix"
    return prefix, _pip_install(prefix, str(src))


def test_build_prints_no_setuptools_warnings(wheel_install):
    _, output = wheel_install
    for warning in SETUPTOOLS_WARNINGS:
        assert warning not in output


def test_pip_install_installs_weights_launchers_and_share_files(wheel_install, monkeypatch):
    prefix, _ = wheel_install
    package = prefix / "lib" / PY / "site-packages" / "tta_perception"
    weights = sorted(p.name for p in (REPO / "tta_perception" / "weights").iterdir()
                     if p.suffix in (".pt", ".bundle", ".json"))
    assert weights and all((package / "weights" / name).is_file() for name in weights)
    assert len((package / "datasets" / "imagenet_classes.txt").read_text().splitlines()) == 1000
    for exe in LAUNCHERS:
        assert os.access(package / "ros" / "bin" / exe, os.X_OK)
    for name in DDS_PROFILES:  # what dds_profile.profile_path('default') returns after a plain pip install
        assert (package / "ros" / "dds" / name).is_file()
    _assert_found_by_name(prefix, monkeypatch)


# ----------------------------------------------------------------------------------- pip install -e
@pytest.fixture(scope="module")
def editable(tmp_path_factory):
    """`make setup` in a temporary prefix: the editable install (PEP 660, through pyproject.toml, with
    setup.cfg's colcon options in place), then install_ament from that checkout."""
    root = tmp_path_factory.mktemp("editable")
    src, prefix = _copy_tree(root / "src"), root / "prefix"
    _pip_install(prefix, "-e", str(src))
    done = _install_ament(prefix, pythonpath=src)  # default --source: the checkout it is imported from
    assert done.returncode == 0, done.stderr
    return src, prefix, done.stdout


def test_editable_install_is_found_by_package_name(editable, monkeypatch):
    src, prefix, output = editable
    assert not (prefix / "share" / "tta_perception").is_symlink()
    _assert_found_by_name(prefix, monkeypatch)
    # links into the checkout: an edit of a launch file applies without reinstalling
    link = prefix / "share" / "tta_perception" / "launch" / "adapt.launch.py"
    assert link.resolve() == (src / "launch" / "adapt.launch.py").resolve()
    assert f"linked {link} -> " in output and f"{ENTRIES} ament entries in {prefix} ({ENTRIES} new," in output


def test_launcher_reached_through_the_link_runs_the_prefix_python(editable, tmp_path):
    _, prefix, _ = editable
    venv = tmp_path / "venv"
    shutil.copytree(prefix / "lib" / "tta_perception", venv / "lib" / "tta_perception", symlinks=True)
    (venv / "bin").mkdir()
    fake = venv / "bin" / "python3"
    fake.write_text('#!/bin/sh\necho "venv-python $*"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "TTA_PERCEPTION_PYTHON"}
    out = subprocess.run([str(venv / "lib" / "tta_perception" / "evaluator"), "-x"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.stdout.strip() == "venv-python -m tta_perception.ros.evaluator -x"


def test_install_ament_is_idempotent_and_refuses_unrelated_files(tmp_path):
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    first = _install_ament(prefix)
    assert first.returncode == 0, first.stderr
    again = _install_ament(prefix)
    assert again.returncode == 0 and again.stdout.strip().endswith(f"(0 new, {ENTRIES} already there)")
    # a dangling link (the checkout moved) is replaced; a copy with the same content is kept
    xml = prefix / "share" / "tta_perception" / "package.xml"
    xml.unlink()
    xml.symlink_to(tmp_path / "gone" / "package.xml")
    config = prefix / "share" / "tta_perception" / "config" / "adapt.yaml"
    config.unlink()
    shutil.copy2(REPO / "config" / "adapt.yaml", config)
    done = _install_ament(prefix)
    assert done.returncode == 0 and f"(1 new, {ENTRIES - 1} already there)" in done.stdout
    assert xml.resolve() == (REPO / "package.xml").resolve() and not config.is_symlink()
    # a file this step did not make: one line, and the prefix is left as it was
    fresh = tmp_path / "fresh"
    other = fresh / "lib" / "tta_perception" / "evaluator"
    other.parent.mkdir(parents=True)
    other.write_text("someone else's\n")
    done = _install_ament(fresh)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"install_ament: error: refusing to replace {other}: it is not a link "
                                   f"to {(REPO / 'tta_perception/ros/bin/evaluator').resolve()} "
                                   "(remove it and run again)")
    assert other.read_text() == "someone else's\n" and not (fresh / "share").exists()
    # ros2 launch does not walk into a linked folder
    linked = tmp_path / "linked"
    (linked / "share" / "tta_perception").mkdir(parents=True)
    (linked / "share" / "tta_perception" / "launch").symlink_to(REPO / "launch")
    done = _install_ament(linked)
    assert done.returncode == 1 and "a link to a folder, which ros2 launch does not search" in done.stderr
    missing = _install_ament(tmp_path / "nowhere")
    assert missing.returncode == 1 and "does not exist (create the venv first)" in missing.stderr


# ------------------------------------------------------------------------------------ declarations
def test_pyproject_names_the_setuptools_backend():
    """Without it, pip < 23.1 (Ubuntu 22.04 venvs: pip 22.0) falls back to `setup.py develop`, which new
    setuptools rejects (setup.cfg's [develop] script_dir): `make setup` failed on ROS Humble."""
    text = (REPO / "pyproject.toml").read_text()
    assert 'build-backend = "setuptools.build_meta"' in text and '"setuptools>=64"' in text
    assert "[project]" not in text  # the metadata stays in setup.py, which colcon reads


def test_make_setup_runs_the_readme_commands():
    makefile, readme = (REPO / "Makefile").read_text(), (REPO / "README.md").read_text()
    assert '$(PY) -m pip install -q -e ".[ros,bags,dev]"' in makefile
    assert "$(PY) -m tta_perception.install_ament --prefix $(VENV)" in makefile
    assert ('.venv/bin/pip install -e ".[ros,bags,dev]" && .venv/bin/python -m tta_perception.install_ament '
            "--prefix .venv") in readme


def _opencv(requirements) -> set[str]:
    names = {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
             for r in requirements}
    return {n.replace("_", "-") for n in names if n.startswith("opencv")}


def test_one_opencv_distribution():
    """The codec needs cv2; corrupt-tta requires opencv-python, and a second OpenCV distribution would
    overwrite its cv2/ files, so the package names the same one."""
    import importlib.metadata as md

    setup = subprocess.run([sys.executable, "-c", "import setuptools, distutils.core as c; "
                            "print('\\n'.join(c.run_setup('setup.py', [], 'init').install_requires))"],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert setup.returncode == 0, setup.stderr
    ours = _opencv(setup.stdout.split("\n"))
    assert ours == {"opencv-python"}
    lines = (REPO / "requirements.txt").read_text().splitlines()
    assert _opencv(line for line in lines if line.strip() and not line.startswith("#")) == ours
    try:
        theirs = _opencv(md.requires("corrupt-tta") or [])
    except md.PackageNotFoundError:
        theirs = set()
    assert theirs <= ours, f"corrupt-tta requires {theirs}: one OpenCV distribution only"
    providers = md.packages_distributions().get("cv2", [])
    assert len(set(providers)) <= 1, f"cv2 comes from several distributions here: {providers}"
