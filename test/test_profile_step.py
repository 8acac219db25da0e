"""``bench --profile-step``: every method's step and floor on the committed driveseg at a small size."""
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
