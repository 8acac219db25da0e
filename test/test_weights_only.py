"""Every reader of .pt files refuses code and garbage in one clean line: what was refused and why,
without PyTorch's "re-run with weights_only=False" advice and without escape sequences."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tta_perception.engine.bundle import BundleError, load_bundle
from tta_perception.models.checkpoint import CheckpointError, read_checkpoint
from tta_perception.models.public import load_weights
from tta_perception.runtime.state import load_state_file
from tta_perception.weights_only import WeightsOnlyError, clean

RAN = []


class _Exploit:
    def __reduce__(self):
        return (os.system, ("true",))


def _hostile(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["pickle"] = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit()}, files["pickle"])
    files["ansi"] = tmp_path / "ansi.pt"
    files["ansi"].write_bytes(b"\x1b[31m\x1b]0;pwned\x07 not a torch file \x1b[0m" * 20)
    files["truncated"] = tmp_path / "trunc.pt"
    torch.save({"w": torch.zeros(100)}, files["truncated"])
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:200])
    return files


READERS = {
    "checkpoint": (lambda p: read_checkpoint(p), CheckpointError),
    "bundle": (lambda p: load_bundle(p), BundleError),
    "public": (lambda p: load_weights(torch.nn.Linear(1, 1), p), ValueError),
    "state": (lambda p: load_state_file(p), WeightsOnlyError),
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("kind", ["pickle", "ansi", "truncated"])
def test_refusals_are_one_clean_line(tmp_path, reader, kind):
    path = _hostile(tmp_path)[kind]
    read, error = READERS[reader]
    with pytest.raises(error) as info:
        read(path)
    message = str(info.value)
    assert path.name in message and "\n" not in message
    assert "weights_only" not in message and "False" not in message and "\x1b" not in message
    assert not any(ord(c) < 32 for c in message)
    if kind == "pickle":
        assert "refused" in message and "system" in message  # says what was refused: the global
    else:
        assert "corrupt" in message or "refused" in message


def test_clean_strips_escapes_and_control_characters():
    assert clean("a\x1b[31mred\x1b[0m\x07b\nc") == "ared?b c"
