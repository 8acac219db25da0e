"""Architectures whose public checkpoints load as they are, wrapped in the ``TTAModel`` contract.

- ``wrn28_10``: WideResNet-28-10, RobustBench's CIFAR-10 ``Standard`` (inputs used as they are).
- ``resnext29_32x4d``: ResNeXt-29 (cardinality 4, base width 32), RobustBench's CIFAR-100
  ``Hendrycks2020AugMix_ResNeXt`` (normalises with mean = std = 0.5 inside).
- ``resnet50``: torchvision ResNet-50 for ImageNet, ImageNet normalisation inside, like the reference
  TTA framework's wrapped torchvision models.
- ``deeplabv3_mobilenet_v3_large``, ``deeplabv3_resnet50``, ``lraspp_mobilenet_v3_large``:
  torchvision segmentation models (ImageNet normalisation inside).

Module attribute names equal the checkpoint key names (RobustBench's / torchvision's), so
``load_weights`` needs no renaming; the normalisation constants are non-persistent buffers and never
appear among the keys. ``torchvision:<arch>`` names download torchvision's published weights on a
machine with internet access (tests never do).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import weights_only
from .base import Normalize, SingleFrameBatchNorm2d, TTAModel
from .registry import register_model
from .resize import upsample_bilinear

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputNorm(Normalize):
    """``Normalize`` whose constants are not saved: checkpoints of the public models lack them."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        nn.Module.__init__(self)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)


def _names(class_names: Optional[Sequence[str]], num_classes: int, default: Sequence[str] = ()) -> tuple:
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        return tuple(class_names)
    return tuple(default) if len(default) == num_classes else tuple(str(i) for i in range(num_classes))


# ------------------------------------------------------------------------------------ WideResNet
class WRNBlock(nn.Module):
    """Pre-activation basic block of RobustBench's WideResNet (same parameter names)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        # the projection shortcut takes the pre-activated input, as in the original
        self.convShortcut = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + (x if self.convShortcut is None else self.convShortcut(a))


class WRNStage(nn.Module):
    def __init__(self, n: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[WRNBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(TTAModel):
    """WRN-depth-k for 32×32 inputs in [0, 1]; RobustBench ``Standard`` = WRN-28-10, no normalisation."""

    task = "cls"

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
                 class_names: Optional[Sequence[str]] = None):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = WRNStage(n, ch[0], ch[1], 1)
        self.block2 = WRNStage(n, ch[1], ch[2], 2)
        self.block3 = WRNStage(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        self.num_classes = num_classes
        from ..datasets.classes import CIFAR10_CLASSES
        self.class_names = _names(class_names, num_classes, CIFAR10_CLASSES)
        self.candidate_blocks = tuple(f"block{b}.layer.{i}" for b in (1, 2, 3) for i in range(n))
        for m in self.modules():  # RobustBench's initialisation, for training from scratch
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # = avg_pool2d(8) at 32×32

    def classify(self, features):
        return self.fc(features)


# --------------------------------------------------------------------------------------- ResNeXt
class ResNeXtBottleneck(nn.Module):
    """ResNeXt block (type C) of the AugMix CIFAR code (same parameter names)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, cardinality: int, base_width: int, stride: int = 1):
        super().__init__()
        width = (planes * base_width // 64) * cardinality
        self.conv_reduce = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(width)
        self.conv_conv = nn.Conv2d(width, width, 3, stride, 1, groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv_expand = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or c_in != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn_reduce(self.conv_reduce(x)))
        out = F.relu(self.bn(self.conv_conv(out)))
        out = self.bn_expand(self.conv_expand(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNeXt(TTAModel):
    """ResNeXt-29 for 32×32 CIFAR-100 (RobustBench ``Hendrycks2020AugMix_ResNeXt``).

    The checkpoint has no normalisation keys (RobustBench loads it non-strictly for that reason);
    its ``mu``/``sigma`` (0.5) live here as non-persistent buffers and are ignored if a file has them.
    """

    task = "cls"
    checkpoint_ignore = ("mu", "sigma")

    def __init__(self, depth: int = 29, cardinality: int = 4, base_width: int = 32, num_classes: int = 100,
                 class_names: Optional[Sequence[str]] = None):
        super().__init__()
        if (depth - 2) % 9:
            raise ValueError(f"ResNeXt depth must be 9n+2, got {depth}")
        n = (depth - 2) // 9
        self.normalize = InputNorm((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        self.conv_1_3x3 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(64)
        c_in = 64
        for s, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2)), start=1):
            blocks = []
            for i in range(n):
                blocks.append(ResNeXtBottleneck(c_in, planes, cardinality, base_width, stride if i == 0 else 1))
                c_in = planes * 4
            self.add_module(f"stage_{s}", nn.Sequential(*blocks))
        self.classifier = nn.Linear(c_in, num_classes)
        self.num_classes = num_classes
        from ..datasets.classes import CIFAR100_CLASSES
        self.class_names = _names(class_names, num_classes, CIFAR100_CLASSES)
        self.candidate_blocks = tuple(f"stage_{s}.{i}" for s in (1, 2, 3) for i in range(n))

    def forward_features(self, x):
        x = F.relu(self.bn_1(self.conv_1_3x3(self.normalize(x))))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def classify(self, features):
        return self.classifier(features)


# ------------------------------------------------------------------------------ torchvision ResNet
class TorchvisionResNet(TTAModel):
    """A torchvision ResNet whose modules are this model's own (``conv1``, ``layer1``…, ``fc``), so
    torchvision's state dicts load unchanged; ImageNet normalisation happens inside."""

    task = "cls"

    def __init__(self, arch: str = "resnet50", num_classes: int = 1000,
                 class_names: Optional[Sequence[str]] = None):
        super().__init__()
        import torchvision
        net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        self.normalize = InputNorm(IMAGENET_MEAN, IMAGENET_STD)
        for name, child in net.named_children():
            self.add_module(name, child)
        self.num_classes = num_classes
        from ..datasets.classes import imagenet_classes
        self.class_names = _names(class_names, num_classes, imagenet_classes() if num_classes == 1000 else ())
        self.candidate_blocks = tuple(f"layer{i}.{j}" for i in range(1, 5)
                                      for j in range(len(getattr(self, f"layer{i}"))))

    def forward_features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def classify(self, features):
        return self.fc(features)


# -------------------------------------------------------------------------- torchvision segmentation
def _seg_candidates(backbone: nn.Module) -> tuple[str, ...]:
    """Residual blocks of a segmentation backbone: MobileNetV3 inverted residuals or ResNet bottlenecks."""
    from torchvision.models.mobilenetv3 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck
    return tuple(f"backbone.{name}" for name, m in backbone.named_modules()
                 if isinstance(m, (InvertedResidual, Bottleneck, BasicBlock)))


def _make_pooled_bn_safe(head: nn.Module) -> None:
    from torchvision.models.segmentation.deeplabv3 import ASPPPooling
    for m in head.modules():
        if isinstance(m, ASPPPooling):
            for bn in m.modules():
                if type(bn) is nn.BatchNorm2d:
                    bn.__class__ = SingleFrameBatchNorm2d


def _voc_names() -> tuple[str, ...]:
    try:
        from torchvision.models.segmentation import DeepLabV3_MobileNet_V3_Large_Weights as W
        return tuple(W.COCO_WITH_VOC_LABELS_V1.meta["categories"])
    except Exception:  # pragma: no cover - old torchvision
        return ()


class TorchvisionSegmentation(TTAModel):
    """torchvision DeepLabV3 / LR-ASPP with ``backbone`` and ``classifier`` as in its checkpoints.

    The auxiliary head of the published DeepLabV3 weights is not built (TTA never uses it); its keys
    are skipped when loading.
    """

    task = "seg"
    checkpoint_ignore = ("aux_classifier.",)

    def __init__(self, arch: str = "deeplabv3_mobilenet_v3_large", num_classes: int = 21,
                 class_names: Optional[Sequence[str]] = None):
        super().__init__()
        import torchvision
        if arch not in SEG_ARCHS:
            raise ValueError(f"unknown segmentation arch {arch!r}; choose from {', '.join(SEG_ARCHS)}")
        kwargs = dict(weights=None, weights_backbone=None, num_classes=num_classes)
        if arch.startswith("deeplabv3"):
            kwargs["aux_loss"] = False
        net = torchvision.models.get_model(arch, **kwargs)
        self.arch = arch
        self.normalize = InputNorm(IMAGENET_MEAN, IMAGENET_STD)
        self.backbone = net.backbone
        self.classifier = net.classifier
        _make_pooled_bn_safe(self.classifier)
        self.num_classes = num_classes
        self.class_names = _names(class_names, num_classes, _voc_names())
        self.candidate_blocks = _seg_candidates(self.backbone)

    def forward_features(self, x):
        feats = self.backbone(self.normalize(x))
        if self.arch.startswith("lraspp"):
            # LR-ASPP head up to its two 1×1 classifiers, both branches at the low-level resolution;
            # classify() applies the classifiers (1×1 convs commute with the bilinear upsampling).
            head, low, high = self.classifier, feats["low"], feats["high"]
            mid = head.cbr(high) * head.scale(high)
            mid = upsample_bilinear(mid, low.shape[-2:])
            return torch.cat([low, mid], dim=1)
        out = feats["out"]
        for layer in list(self.classifier.children())[:-1]:  # DeepLabHead without its final 1×1 conv
            out = layer(out)
        return out

    def classify(self, features):
        if self.arch.startswith("lraspp"):
            head = self.classifier
            n_low = head.low_classifier.in_channels
            return head.low_classifier(features[:, :n_low]) + head.high_classifier(features[:, n_low:])
        return self.classifier[-1](features)


SEG_ARCHS = ("deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large")

# published torchvision weights per arch (``torchvision:<arch>`` downloads these by default)
TORCHVISION_WEIGHTS = {
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",  # the reference framework's ImageNet-C source model
    "deeplabv3_mobilenet_v3_large": "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
    "deeplabv3_resnet50": "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
    "lraspp_mobilenet_v3_large": "LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
}


# ------------------------------------------------------------------------------------ checkpoints
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


def _numpy_scalar_globals() -> list:
    """Globals that rebuild plain NumPy scalars (``'best_acc': np.float64(...)`` beside the weights in
    many research checkpoints), which ``weights_only`` refuses by default. They only turn raw bytes
    into numbers; no other global is allowed."""
    import numpy as np
    scalar = np.float64(0).__reduce__()[0]  # numpy(._)core.multiarray.scalar
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
             np.float16, np.float32, np.float64)
    allowed = [scalar, np.dtype] + [type(np.dtype(k)) for k in kinds]
    other = "numpy.core.multiarray.scalar" if scalar.__module__.startswith("numpy._core") \
        else "numpy._core.multiarray.scalar"
    allowed.append((scalar, other))  # files pickled under the other NumPy major version
    return allowed


def _torch_load(path: Path):
    try:
        return weights_only.load(path, allowed_globals=_numpy_scalar_globals())
    except (TypeError, ValueError) as err:  # a torch without (callable, name) entries
        if isinstance(err, weights_only.WeightsOnlyError):
            raise
        return weights_only.load(path, allowed_globals=_numpy_scalar_globals()[:-1])


def _read_checkpoint(path: Path) -> dict:
    from ..files import problem

    path = Path(path)
    reason = problem(path, "checkpoint")
    if reason:
        raise (FileNotFoundError if reason.endswith("not found") else ValueError)(reason)
    try:
        obj = _torch_load(path)
    except weights_only.WeightsOnlyError as err:
        raise ValueError(f"{path}: cannot read checkpoint: {err.reason}") from None
    for _ in range(3):  # {'state_dict': {...}}, {'model': {...}}, possibly nested
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None and not any(torch.is_tensor(v) for v in obj.values()):
                obj = inner
                continue
        break
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict (optionally under 'state_dict' or 'model'), "
                         f"found {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if not torch.is_tensor(value):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                             "not a plain state dict")
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def _listing(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_weights(model: nn.Module, path, *, strict: bool = True) -> nn.Module:
    """Load a RobustBench / torchvision / own checkpoint into ``model`` and return it.

    Accepts a bare state dict or one under ``state_dict`` / ``model``, with or without ``module.``
    prefixes, read with ``torch.load(weights_only=True)`` (no code runs while loading). Keys the
    model declares in ``checkpoint_ignore`` (normalisation constants, auxiliary heads) are skipped,
    and BatchNorm ``num_batches_tracked`` may be absent (pre-1.0 checkpoints). Anything else missing
    or unexpected raises ``ValueError`` naming the keys (with ``strict=False`` it is only logged);
    shape mismatches always raise.
    """
    state = _read_checkpoint(path)
    ignore = tuple(getattr(model, "checkpoint_ignore", ()))

    def ignored(k: str) -> bool:
        return any(k == p or (p.endswith(".") and k.startswith(p)) for p in ignore)

    state = {k: v for k, v in state.items() if not ignored(k)}
    own = model.state_dict()
    missing = {k for k in own if k not in state and not k.endswith("num_batches_tracked")}
    unexpected = {k for k in state if k not in own}
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    name = type(model).__name__
    if shapes:
        raise ValueError(f"{path}: checkpoint does not fit {name}: shape mismatch in {len(shapes)} "
                         f"tensor(s): {'; '.join(shapes[:5])}{' …' if len(shapes) > 5 else ''}")
    if missing or unexpected:
        msg = (f"{path}: checkpoint does not fit {name}: "
               + (f"missing keys ({len(missing)}): {_listing(missing)}" if missing else "")
               + ("; " if missing and unexpected else "")
               + (f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}" if unexpected else ""))
        if strict:
            raise ValueError(msg)
        log.warning(msg)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return model


def _finish(model: nn.Module, checkpoint) -> nn.Module:
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.eval()


def download_torchvision_weights(model: nn.Module, arch: str, weights: Optional[str] = None) -> nn.Module:
    """Fetch torchvision's published weights (needs internet on first use; cached by torch.hub)."""
    import torchvision
    spec = weights or TORCHVISION_WEIGHTS[arch]
    if "." not in spec:  # "IMAGENET1K_V2" -> "ResNet50_Weights.IMAGENET1K_V2"
        spec = TORCHVISION_WEIGHTS[arch].split(".")[0] + "." + spec
    w = torchvision.models.get_weight(spec)
    state = {k: v for k, v in w.get_state_dict(progress=True).items() if not k.startswith("aux_classifier.")}
    model.load_state_dict(state, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------- registry
@register_model("wrn28_10")
def wrn28_10(num_classes: int = 10, class_names=None, checkpoint=None) -> WideResNet:
    """WRN-28-10 (RobustBench CIFAR-10 ``Standard`` layout); ``checkpoint``: local weights file."""
    return _finish(WideResNet(28, 10, num_classes, class_names), checkpoint)


@register_model("resnext29_32x4d")
def resnext29_32x4d(num_classes: int = 100, class_names=None, checkpoint=None) -> CifarResNeXt:
    """ResNeXt-29 AugMix (RobustBench CIFAR-100 ``Hendrycks2020AugMix_ResNeXt`` layout)."""
    return _finish(CifarResNeXt(29, 4, 32, num_classes, class_names), checkpoint)


# the reference framework's MODEL.ARCH names for the same two models
register_model("Standard")(wrn28_10)
register_model("Hendrycks2020AugMix_ResNeXt")(resnext29_32x4d)


@register_model("resnet50")
def resnet50(num_classes: int = 1000, class_names=None, checkpoint=None) -> TorchvisionResNet:
    """torchvision ResNet-50 layout, random init unless ``checkpoint`` is given."""
    return _finish(TorchvisionResNet("resnet50", num_classes, class_names), checkpoint)


def _seg_builder(arch: str):
    def build(num_classes: int = 21, class_names=None, checkpoint=None) -> TorchvisionSegmentation:
        return _finish(TorchvisionSegmentation(arch, num_classes, class_names), checkpoint)
    build.__name__ = arch
    build.__doc__ = f"torchvision {arch} layout (21 VOC classes by default), random init unless ``checkpoint``."
    return build


for _arch in SEG_ARCHS:
    register_model(_arch)(_seg_builder(_arch))


def _torchvision_builder(arch: str):
    def build(weights: Optional[str] = None, **kwargs) -> nn.Module:
        from .registry import build_model
        model = build_model(arch, **kwargs)
        return download_torchvision_weights(model, arch, weights)
    build.__name__ = f"torchvision_{arch}"
    build.__doc__ = (f"{arch} with torchvision's published weights ({TORCHVISION_WEIGHTS[arch]} unless "
                     "``weights`` names another, e.g. 'IMAGENET1K_V2'); downloads on first use.")
    return build


for _arch in TORCHVISION_WEIGHTS:
    register_model(f"torchvision:{_arch}")(_torchvision_builder(_arch))

__all__ = ["WideResNet", "CifarResNeXt", "TorchvisionResNet", "TorchvisionSegmentation", "InputNorm",
           "load_weights", "download_torchvision_weights", "SEG_ARCHS", "TORCHVISION_WEIGHTS"]
