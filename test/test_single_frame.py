"""Every method runs on every public architecture at batch 1 (a window of one frame), as a node
with window 1 would: BatchNorm layers that see one value per channel in training mode (DeepLabV3's
ASPP pooling, small frames downsampled to 1x1) fall back to their running statistics."""
from __future__ import annotations

import pytest
import torch

from tta_perception.bench.gpu import method_options
from tta_perception.engine import build_method, list_methods
from tta_perception.models import build_model

torch.set_num_threads(1)

ARCHS = {  # name: (kwargs, input size)
    "driveseg": ({}, (32, 64)), "signnet": ({}, (32, 32)), "wrn28_10": ({}, (32, 32)),
    "resnext29_32x4d": ({}, (32, 32)), "resnet50": ({"num_classes": 10}, (32, 32)),
    "deeplabv3_mobilenet_v3_large": ({"num_classes": 5}, (32, 64)),
    "deeplabv3_resnet50": ({"num_classes": 5}, (32, 64)),
    "lraspp_mobilenet_v3_large": ({"num_classes": 5}, (32, 64)),
}
METHODS = ["source", "norm", "tent", "eata", "sar", "cotta", "rmt", "dplot"]


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch(request):
    torch.manual_seed(0)
    kwargs, size = ARCHS[request.param]
    return request.param, build_model(request.param, **kwargs), size


@pytest.mark.parametrize("name", METHODS)
def test_every_method_on_one_frame(arch, name):
    assert set(METHODS) <= set(list_methods())
    arch_name, model, size = arch
    import copy

    opts = method_options(name, model)
    if name == "cotta":
        opts["n_augmentations"] = 2  # the branch runs; its cost does not matter here
    method = build_method(name, copy.deepcopy(model), **opts)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    out = method.step(x)
    assert out.shape[0] == 1 and torch.isfinite(out).all(), (arch_name, name)
    assert torch.isfinite(method.predict(x)).all()
