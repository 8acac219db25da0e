"""``cotta``: continual test-time adaptation (Wang et al., CVPR 2022) as the reference framework's
``methods/cotta.py`` (classification) and ``segmentation/methods/cotta.py`` (segmentation).

Student trained with CE towards the EMA teacher; the teacher's target is averaged over
``n_augmentations`` augmented passes when the anchor (source) model's mean confidence is below
``ap``; stochastic restore of a fraction ``rst`` of the student's weights to the source.
Segmentation: the ensemble is CoTTA's multi-scale + random-flip one, each output flipped back and
resized to the input before averaging (the reference's segmentation variant)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..base import TTAMethod
from ..config import MethodConfig, _check, by_num_classes, check_optimizer
from ..losses import cross_entropy_soft, ema_update, symmetric_cross_entropy
from ..model_utils import set_bn_mode
from ..augment import cotta_augment
from ..registry import register_method


# COTTA.AP of the reference framework's configs by the dataset's number of classes:
# cfgs/cifar10_c/cotta.yaml 0.92 (10 classes), cfgs/cifar100_c 0.72 (100), cfgs/domainnet126 0.1 (126),
# cfgs/imagenet_others (200), cfgs/imagenet_c and cfgs/ccc 0.1 (1000).
AP_BY_CLASSES = ((10, 0.92), (100, 0.72), (1000, 0.1))
# segmentation/cfgs/cotta.yaml and segmentation/conf.py COTTA.AP (CarlaTTA)
AP_SEG = 0.9


@dataclass
class CoTTAConfig(MethodConfig):
    optimizer: str = "adam"       # cfgs/cifar10_c/cotta.yaml OPTIM.METHOD (ImageNet-C: SGD 0.01)
    lr: float = 1e-3              # cfgs/cifar10_c/cotta.yaml OPTIM.LR
    beta: float = 0.9             # OPTIM.BETA
    momentum: float = 0.9         # OPTIM.MOMENTUM (SGD only)
    weight_decay: float = 0.0     # OPTIM.WD
    mt: float = 0.999             # M_TEACHER.MOMENTUM
    rst: float = 0.01             # COTTA.RST (ImageNet-C: 0.001)
    # COTTA.AP, the anchor confidence below which the teacher target is augmentation-averaged; None:
    # the official value for the number of classes (AP_BY_CLASSES, the smallest configured dataset
    # with at least as many classes: 12 sign classes -> CIFAR100's 0.72), AP_SEG for segmentation
    ap: float | None = None
    n_augmentations: int = 32     # TEST.N_AUGMENTATIONS (the seg variant uses the len(seg_scales) scales)
    loss: str = "ce"              # cotta.py: CE for CIFAR ("softmax_entropy_cifar"), SCE for ImageNet
    soft_augment: bool = False    # get_tta_transforms(soft=False)
    gaussian_std: float = 0.005   # get_tta_transforms(gaussian_std=0.005)
    # segmentation/methods/cotta.py: ratios 0.5..1.75 of half the crop size = 0.25..0.875 of the input
    seg_scales: tuple[float, ...] = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875)

    def validate(self) -> None:
        super().validate()
        check_optimizer(self.optimizer)
        _check(self.lr > 0, "lr must be > 0")
        _check(0 <= self.mt <= 1 and 0 <= self.rst <= 1, "mt and rst must be in [0, 1]")
        _check(self.ap is None or 0 <= self.ap <= 1, "ap must be in [0, 1]")
        _check(self.n_augmentations >= 1, "n_augmentations must be >= 1")
        _check(self.loss in ("ce", "sce"), "loss must be 'ce' or 'sce'")
        _check(len(self.seg_scales) > 0 and all(s > 0 for s in self.seg_scales), "seg_scales must be > 0")


@register_method("cotta")
class CoTTA(TTAMethod):
    Config = CoTTAConfig
    PREDICTORS = ("teacher",)
    STATIC_MODULES = ("anchor",)

    def setup(self) -> None:
        c = self.cfg
        self.ap = c.ap if c.ap is not None else (
            AP_SEG if self.task == "seg" else by_num_classes(AP_BY_CLASSES, self.num_classes))
        self._stats["ap"] = self.ap
        set_bn_mode(self.model, "batch_ema", c.bn_momentum)
        self.model.requires_grad_(True)  # cotta.py: all parameters are trained
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.anchor = copy.deepcopy(self.model).requires_grad_(False)
        set_bn_mode(self.anchor, "batch")  # batch statistics, buffers never touched: truly static
        self.modules.update(teacher=self.teacher, anchor=self.anchor)
        self.optimizers["opt"] = self._make_optimizer(list(self.model.parameters()), c.optimizer, c.lr,
                                                      c.beta, c.momentum, c.weight_decay)
        # the parameters stochastic restore touches: weight/bias that are trained
        self._restore_names = [n for n, p in self.model.named_parameters()
                               if n.rsplit(".", 1)[-1] in ("weight", "bias") and p.requires_grad]

    def inference_modules(self):
        return {"teacher": self.teacher}

    def predict_with(self, modules, x):
        return modules["teacher"](x)  # reference forward_sliding_window: the teacher's output

    @torch.no_grad()
    def _teacher_target(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        anchor_conf = F.softmax(self.anchor(x), dim=1).max(1)[0].mean()
        t = self.teacher(x)
        if float(anchor_conf) >= self.ap:
            return t
        if self.task == "cls":  # cotta.py: the mean over augmented passes only
            return torch.stack([self.teacher(cotta_augment(x, c.soft_augment, c.gaussian_std))
                                for _ in range(c.n_augmentations)]).mean(0)
        size = x.shape[-2:]
        acc = t.clone()
        for s in c.seg_scales:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            xi = torch.where(flip[:, None, None, None], x.flip(-1), x)
            hw = (max(1, int(round(size[0] * s))), max(1, int(round(size[1] * s))))
            xi = F.interpolate(xi, size=hw, mode="bilinear", align_corners=True)
            o = self.teacher(xi)
            o = torch.where(flip[:, None, None, None], o.flip(-1), o)  # undo the flip
            acc += F.interpolate(o, size=size, mode="bilinear", align_corners=True)
        return acc / (len(c.seg_scales) + 1)

    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        c, opt = self.cfg, self.optimizers["opt"]
        target = self._teacher_target(x)
        with torch.enable_grad():
            out = self.model(x)
            per = cross_entropy_soft(out, target) if c.loss == "ce" else symmetric_cross_entropy(out, target)
            loss = per.mean()
            if not self._minimise(loss, opt):
                return target.detach()
        ema_update(self.teacher, self.model, c.mt)
        if c.rst > 0:  # stochastic restore towards the source weights
            src = self._source["modules"]["model"]
            with torch.no_grad():
                params = dict(self.model.named_parameters())
                for n in self._restore_names:
                    p = params[n]
                    mask = torch.rand_like(p) < c.rst
                    p.copy_(torch.where(mask, src[n].to(p.device), p))
        self._commit()
        return target.detach()
