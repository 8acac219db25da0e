"""Source training on clear weather only (the setting every TTA paper assumes), seeded; and the
same training under every weather (``weather="all"``): the target-supervised oracle, the usual upper
bound of domain-adaptation papers, which the benchmark reports as its ceiling.

Worlds used: training scenes come from world seeds >= 1000, while every evaluation sequence and
held-out set uses seeds < 1000, so the reported scores are measured on unseen streets.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .metrics import Accuracy, ConfusionMatrix
from .models import build_model
from .runtime.preprocess import to_tensor
from .world.classes import IGNORE_INDEX, NUM_CLASSES
from .world.effects import compose
from .world.render import Renderer
from .world.sign_crops import render_sign_crops
from .world.signs import NUM_SIGNS
from .world.weather import WeatherParameters, interpolate, preset

TRAIN_SEED_BASE = 1000

#: a weather sampler draws one frame's (or crop's) weather from a seeded generator
WeatherSampler = Callable[[np.random.Generator], WeatherParameters]


def clear_weather(rng: np.random.Generator) -> WeatherParameters:
    """ClearNoon with natural variation of sun position and a few clouds (still 'clear')."""
    return preset("ClearNoon").replace(
        sun_altitude_angle=float(rng.uniform(35, 70)), sun_azimuth_angle=float(rng.uniform(-180, 180)),
        cloudiness=float(rng.uniform(0, 25)))


@functools.lru_cache(maxsize=1)
def weather_targets() -> tuple[WeatherParameters, ...]:
    """Every weather the world names: CARLA's presets (``world/weather.py``, HeavyFogNoon included)
    and each keyframe of the shipped sequences (``config/sequences``: e.g. clear2fog's light fog,
    which is no preset). Only the weather definitions are read, never an evaluation frame."""
    from .world.schedule import list_sequences, load_schedule
    from .world.weather import PRESETS

    out = list(PRESETS.values())
    for name in list_sequences():
        out += [k.weather for k in load_schedule(name).keyframes]
    unique: dict[tuple, WeatherParameters] = {}
    for w in out:
        unique.setdefault(tuple(sorted(w.as_dict().items())), w)
    return tuple(unique.values())


def all_weather(rng: np.random.Generator) -> WeatherParameters:
    """The oracle's weather: a target of :func:`weather_targets` drawn uniformly, and with
    probability 1/2 blended from a clear noon by a uniform factor, because the sequences spend as
    many frames between keyframes (light rain, dusk, thinning fog) as on them."""
    targets = weather_targets()
    target = targets[int(rng.integers(len(targets)))]
    if rng.random() < 0.5:
        return interpolate(clear_weather(rng), target, float(rng.uniform(0, 1)))
    return target


WEATHERS: dict[str, WeatherSampler] = {"clear": clear_weather, "all": all_weather}


def render_seg_set(n: int, seed: int, size=(128, 256), frames_per_world: int = 10, progress: bool = True,
                   weather: WeatherSampler = clear_weather):
    """``n`` frames from worlds ``TRAIN_SEED_BASE + seed*10000 + k`` under ``weather`` (clear by
    default, the source model's data): (rgb, labels)."""
    rng = np.random.default_rng([seed, 11])
    rgb = np.empty((n, size[0], size[1], 3), np.uint8)
    lab = np.empty((n, size[0], size[1]), np.uint8)
    renderer = None
    desc = "render clear frames" if weather is clear_weather else "render all-weather frames"
    for i in tqdm(range(n), desc=desc, disable=not progress, unit="frame"):
        if i % frames_per_world == 0:
            renderer = Renderer(TRAIN_SEED_BASE + seed * 10000 + i // frames_per_world, *size)
        buf = renderer.render(float(rng.uniform(0, 900)))
        rgb[i] = compose(buf, weather(rng), frame=i, noise_seed=seed)
        lab[i] = buf.label
    return rgb, lab


def render_cls_set(n: int, seed: int, weathers=None, weather: WeatherSampler = clear_weather,
                   corruptions: Sequence[str] = (), severity: int = 5, progress: bool = False):
    """``n`` sign crops from training crop seeds (``TRAIN_SEED_BASE + seed``) under 64 weathers
    drawn by ``weather`` (or the given ``weathers``). With ``corruptions`` the crops are dealt
    round-robin into ``1 + len(corruptions)`` equal groups: group 0 keeps those weathers, group k
    is rendered in clear weather and gets corruption k at ``severity``, as the benchmark corrupts
    clear crops."""
    rng = np.random.default_rng([seed, 12])
    weathers = weathers or [weather(rng) for _ in range(64)]
    if not corruptions:
        return render_sign_crops(n, weathers, seed=TRAIN_SEED_BASE + seed, progress=progress)
    from .world.corruptions import corrupt_images

    clear = [clear_weather(rng) for _ in range(64)]
    k = 1 + len(corruptions)
    per_crop = [weathers[i % len(weathers)] if i % k == 0 else clear[i % len(clear)] for i in range(n)]
    x, y = render_sign_crops(n, per_crop, seed=TRAIN_SEED_BASE + seed, progress=progress)
    for j, c in enumerate(tqdm(corruptions, desc=f"corrupt training crops s{severity}", disable=not progress,
                               unit="corruption"), start=1):
        idx = np.arange(j, n, k)
        if len(idx):
            x[idx] = corrupt_images(x[idx], c, severity, seed=TRAIN_SEED_BASE + seed)
    return x, y


@dataclass
class TrainConfig:
    task: str = "seg"
    seed: int = 0
    train_size: int = 2400        # frames (seg) / crops (cls)
    epochs: int = 8
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_size: int = 200
    threads: int = 0              # 0 = torch default
    weather: str = "clear"        # "clear": the source model; "all": the oracle (every weather, + corruptions for cls)
    severity: int = 5             # cls oracle: corruption severity, the benchmark's (bench --severity)
    arch: str = ""                # "" = the task's embedded architecture (driveseg / signnet); any registered name
    pretrained: bool = False      # start from the architecture's published weights (lite0_*: ImageNet)
    extra: dict = field(default_factory=dict)


def _class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse square-root frequency weights (normalised to mean 1): helps thin classes (poles, lines)."""
    counts = np.bincount(labels[labels != IGNORE_INDEX].ravel(), minlength=num_classes).astype(np.float64)
    w = 1.0 / np.sqrt(np.maximum(counts / counts.sum(), 1e-5))
    w = np.clip(w / w.mean(), 0.2, 5.0)
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def _initial_model(cfg: TrainConfig, default: str):
    """The network training starts from: ``cfg.arch`` (default the task's embedded one), from its
    published weights with ``cfg.pretrained`` (the builder records where they came from); else as the
    model loader builds it (any registered name, entry points included), asked for the world's
    classes and checked against the contract before any frame is rendered."""
    arch = cfg.arch or default
    if cfg.pretrained:
        return build_model(arch, pretrained=True)
    from .runtime.model_loader import load_model

    return load_model(architecture=arch, task=cfg.task, num_classes=NUM_CLASSES if cfg.task == "seg" else NUM_SIGNS,
                      label="--arch", architecture_label="--arch").model


def train_source(cfg: TrainConfig, progress: bool = True, log=print):
    """Train the embedded source model for ``cfg.task``; returns (model, report dict)."""
    if cfg.task not in ("seg", "cls"):
        raise ValueError(f"task must be 'seg' or 'cls', got {cfg.task!r}")
    if cfg.weather not in WEATHERS:
        raise ValueError(f"weather must be one of {', '.join(WEATHERS)}, got {cfg.weather!r}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = _initial_model(cfg, "driveseg" if cfg.task == "seg" else "signnet")  # refused before rendering
    t0 = time.time()
    if cfg.task == "seg":
        sampler = WEATHERS[cfg.weather]
        x_np, y_np = render_seg_set(cfg.train_size, cfg.seed, progress=progress, weather=sampler)
        xv_np, yv_np = render_seg_set(cfg.val_size, cfg.seed + 1, progress=progress, weather=sampler)
        weights = _class_weights(y_np, NUM_CLASSES)
    else:
        kw = {}
        if cfg.weather == "all":
            from .world.corruptions import CORRUPTIONS
            kw = dict(weather=all_weather, corruptions=CORRUPTIONS, severity=cfg.severity, progress=progress)
        x_np, y_np = render_cls_set(cfg.train_size, cfg.seed, **kw)
        xv_np, yv_np = render_cls_set(cfg.val_size, cfg.seed + 1, **kw)
        weights = None
    render_s = time.time() - t0
    x, y = to_tensor(x_np), torch.from_numpy(y_np.astype(np.int64))
    del x_np
    n = len(x)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    bar = tqdm(total=total, desc=f"train {cfg.task}", disable=not progress, unit="step")
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            xb, yb = x[idx], y[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # flips: DPLOT pairs each frame with its mirror
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            if cfg.task == "seg":
                yb = torch.where(flip.view(-1, 1, 1), yb.flip(-1), yb)
            else:  # no sign is the mirror image of another, so flips keep labels; plus small shifts
                shift = int(torch.randint(-4, 5, (1,), generator=gen))
                xb = torch.roll(xb, shifts=shift, dims=-1)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, weight=weights, ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    score = evaluate_arrays(model, xv_np, yv_np, cfg.task)
    report = {"task": cfg.task, "arch": cfg.arch or ("driveseg" if cfg.task == "seg" else "signnet"),
              **({"pretrained": model.pretrained_from} if getattr(model, "pretrained_from", None) else {}),
              "weather": cfg.weather, "train_size": n, "epochs": cfg.epochs, "render_seconds": round(render_s, 1),
              "train_seconds": round(time.time() - t0 - render_s, 1), "val": score}
    log(f"validation ({cfg.weather} weather, unseen training-distribution worlds): {score}")
    return model, report


@torch.no_grad()
def evaluate_arrays(model, images: np.ndarray, labels: np.ndarray, task: str, batch_size: int = 32) -> dict:
    """Score ``model`` on uint8 images + labels: {'miou', 'pixel_acc'} or {'accuracy'}."""
    model.eval()
    metric = ConfusionMatrix(model.num_classes) if task == "seg" else Accuracy()
    device = next(model.parameters()).device
    for i in range(0, len(images), batch_size):
        xb = to_tensor(images[i:i + batch_size]).to(device)
        pred = model(xb).argmax(1).cpu()
        metric.update(pred, torch.from_numpy(labels[i:i + batch_size].astype(np.int64)))
    if task == "seg":
        return {"miou": round(metric.miou(), 4), "pixel_acc": round(metric.accuracy(), 4)}
    return {"accuracy": round(metric.accuracy(), 4)}


__all__ = ["TrainConfig", "train_source", "evaluate_arrays", "render_seg_set", "render_cls_set",
           "clear_weather", "all_weather", "weather_targets", "WEATHERS", "NUM_SIGNS"]
