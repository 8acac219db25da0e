"""``bench --profile-step``: every method's step and floor on the committed driveseg at a small size;
the real command keeps torch.profiler's C++ (Kineto) lines off the terminal on a machine without CUDA."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tta_perception.bench.profile import FLOORS, LABELS, METHODS, profile_method
from tta_perception.runtime.preprocess import frame_to_input


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return [frame_to_input(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)) for _ in range(2)]


def test_every_method_has_a_floor():
    assert set(FLOORS) == set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_step_floor_and_breakdown(name, frames):
    torch.manual_seed(0)
    r = profile_method(name, frames, window=2, repeats=1, warmup=0, node_params={"input_size": [32, 64]})
    assert r["method"] == name and r["window"] == 2 and r["input_size"] == [32, 64]
    assert r["step_ms"] > 0 and r["floor_ms"] > 0
    assert r["step_over_floor"] == pytest.approx(r["step_ms"] / r["floor_ms"])
    parts = r["breakdown_ms"]
    assert set(parts) == {k.replace("tta::", "") for k in LABELS} | {"optimizer", "rest (losses, python, contention)"}
    assert all(v >= 0 for k, v in parts.items() if not k.startswith("rest"))
    # the NaN guard ran (the node's default) and the snapshot it takes is labelled
    assert r["nan_guard"] and (parts["snapshot"] > 0 or name == "norm")
    assert sum(parts.values()) + r["floor_ms"] == pytest.approx(r["step_ms"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the quieting applies only without CUDA")
def test_profile_step_prints_no_kineto_lines_without_cuda(tmp_path):
    """Before: ``USDT ... profiler_start``/``profiler_stop`` and ``ERROR ... gpuGetDeviceCount failed``
    from Kineto on the process's stderr. The smallest real run: one method, window 1, one thread."""
    repo = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([repo] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    done = subprocess.run([sys.executable, "-m", "tta_perception.cli.main", "bench", "--profile-step",
                           "--methods", "norm", "--window", "1", "--threads", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "adaptation step vs its floor" in out and "| norm |" in out
    noisy = [line for line in out.splitlines() if "ERROR" in line or "USDT" in line]
    assert not noisy, noisy
    assert (tmp_path / "profile_step.json").is_file()


def test_profiler_leaves_the_environment_as_it_was(frames):
    before = os.environ.get("KINETO_LOG_LEVEL")
    profile_method("norm", frames, window=1, repeats=1, warmup=0, node_params={"input_size": [32, 64]})
    assert os.environ.get("KINETO_LOG_LEVEL") == before


def test_profile_runs_on_the_pretrained_segmentation_model(frames):
    """``bench --profile-step --model lite0_seg``: DPLOT with lite0_seg's committed bundle (the node's
    memory budget lifted: a timing, not a deployment)."""
    from tta_perception.models.checkpoint import read_manifest

    if "lite0_seg" not in read_manifest():
        pytest.skip("lite0_seg not committed")
    r = profile_method("dplot", frames, window=2, repeats=1, warmup=0,
                       node_params={"model": "lite0_seg", "max_memory_mb": 1 << 20, "input_size": [32, 64]})
    assert r["step_ms"] > r["floor_ms"] * 0.5 > 0
