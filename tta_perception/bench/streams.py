"""Benchmark test streams, in protocol order, as chunks (one chunk = one ``method.step`` batch).

Embedded world:
- ``cls``: held-out sign crops (ClearNoon, crop seed 7, as ``tta-perception evaluate``) under the 15
  ImageNet-C corruptions. Settings (reference framework): ``continual`` (severity 5, corruptions in
  the standard order, no reset), ``gradual`` (each corruption at severities 1-2-3-4-5-4-3-2-1),
  ``mixed`` (all corruptions' samples shuffled together), ``reset_each_shift`` (continual, reset to
  the source state at each new corruption).
- ``seg``: a rendered driving sequence (world seed 0), frames in time order; batches of consecutive
  frames, or batch 1 for the streaming protocol. ``reset_each_shift`` splits batches at domain
  changes and resets there; ``mixed`` shuffles the frames; ``gradual`` does not apply (the
  sequences are gradual by construction).
Rendered and corrupted images are cached under ``cache_dir`` keyed by every parameter.

The benchmark seed (``bench --seeds``) changes the stream, and seed 0 is the stream every earlier
table used (see :func:`stream_seeds`): ``seg``, the world the sequence is rendered in (schedule seed +
seed: streets, traffic, sensor noise); ``cls``, the corruption noise (held-out crop seed 7 + seed)
and the order of the crops within each domain (seed 0: the order they were generated in, itself a
random order; other seeds: a seeded permutation); ``mixed``, the shuffle. The held-out crops
themselves are the same for every seed. Public data: the reference framework's shuffle seed, 1 + seed.

Public datasets: ``tta_perception.datasets.build_stream`` with the same setting names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .common import DEFAULT_CACHE, cache_key, cached_npz

SETTINGS = ("continual", "gradual", "mixed", "reset_each_shift")
GRADUAL_SEVERITIES = (1, 2, 3, 4, 5, 4, 3, 2, 1)   # reference framework test_time.py
HELDOUT_CLS_SEED = 7                                # as cli/evaluate.py: crop seeds < 1000 are never trained on
SEG_SEQUENCES = ("day2night", "clear2fog", "clear2rain", "dynamic")
MAX_EVAL_WORLD_SEED = 999                           # world seeds >= 1000 are the training worlds (training.py)


def stream_seeds(seed: int, world_seed: int = 0) -> dict[str, int]:
    """What benchmark seed ``seed`` changes in a stream (seed 0 = the original protocol): the seg world
    (schedule seed + seed), the cls corruption-noise seed (crop seed + seed) and the public data's
    shuffle seed (the reference framework's 1 + seed)."""
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"benchmark seeds must be >= 0, got {seed}")
    if world_seed + seed > MAX_EVAL_WORLD_SEED:
        raise ValueError(f"seed {seed}: world seed {world_seed + seed} is a training world (>= 1000); "
                         f"use seeds up to {MAX_EVAL_WORLD_SEED - world_seed}")
    return {"world_seed": world_seed + seed, "noise_seed": HELDOUT_CLS_SEED + seed, "shuffle_seed": 1 + seed}


@dataclass
class Chunk:
    """One step's input: images (uint8 NHWC array or float NCHW tensor), labels, per-sample domain."""

    images: Any
    labels: Any
    domains: Sequence[str]
    index: Sequence[int]                 # x positions for the plot (sample / frame index)
    reset: bool = False                  # reset the method before this chunk
    weather: Sequence[dict] | None = None

    def tensor(self) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):
            return self.images.float()
        from ..runtime.preprocess import to_tensor
        return to_tensor(self.images)

    def label_array(self) -> np.ndarray:
        y = self.labels
        return y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)

    def __len__(self) -> int:
        return len(self.domains)


@dataclass
class BenchStream:
    name: str
    task: str
    num_classes: int
    setting: str
    batch_size: int
    columns: list[str]                   # table columns in order
    column_domain: dict[str, str]        # table column -> domain key of the metric (gradual: '<c>@5')
    n_samples: int
    make_chunks: Callable[[], Iterable[Chunk]]
    info: dict[str, Any] = field(default_factory=dict)
    x_label: str = "sample"
    cycle_frames: int | None = None      # a looping sequence: frames of one weather cycle

    def __iter__(self) -> Iterator[Chunk]:
        return iter(self.make_chunks())


def _split(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ------------------------------------------------------------------------------------ classification
def clean_crops(n: int, seed: int = HELDOUT_CLS_SEED, cache_dir: Path = DEFAULT_CACHE,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``n`` held-out ClearNoon sign crops and labels (cached)."""
    from ..world.sign_crops import render_sign_crops
    from ..world.weather import preset

    def build():
        x, y = render_sign_crops(n, preset("ClearNoon"), seed=seed, progress=progress)
        return {"x": x, "y": y.astype(np.int64)}

    key = cache_key(kind="crops", n=n, seed=seed, weather="ClearNoon")
    d = cached_npz(Path(cache_dir) / "cls" / f"crops_n{n}_s{seed}_{key}" / "clean.npz", build)
    return d["x"], d["y"]


def corrupted_crops(n: int, corruption: str, severity: int, seed: int = HELDOUT_CLS_SEED,
                    cache_dir: Path = DEFAULT_CACHE, noise_seed: int | None = None) -> np.ndarray:
    """The clean crops (crop seed ``seed``) under one corruption drawn with ``noise_seed`` (default:
    the crop seed, the original protocol); cached per corruption, severity and noise seed."""
    from ..world.corruptions import corrupt_images

    noise_seed = seed if noise_seed is None else int(noise_seed)
    key = cache_key(kind="crops", n=n, seed=seed, weather="ClearNoon")
    suffix = "" if noise_seed == seed else f"_noise{noise_seed}"
    path = Path(cache_dir) / "cls" / f"crops_n{n}_s{seed}_{key}" / f"{corruption}_{severity}{suffix}.npz"

    def build():
        x, _ = clean_crops(n, seed, cache_dir)
        return {"x": corrupt_images(x, corruption, severity, seed=noise_seed)}

    return cached_npz(path, build)["x"]


def world_cls_stream(*, n: int, setting: str = "continual", batch_size: int = 64, severity: int = 5,
                     corruptions: Sequence[str] | None = None, seed: int = 0, shuffle: bool = False,
                     cache_dir: Path = DEFAULT_CACHE, progress: bool = True) -> BenchStream:
    """``shuffle``: the crops of every domain in one order drawn from ``seed``, as the reference
    framework's test loader (``random.seed(RNG_SEED)`` then ``random.shuffle(samples)`` for each
    domain, so every corruption sees the same order); without it the order is per domain (see the
    module docstring). The seed's corruption noise applies either way."""
    from ..world.corruptions import CORRUPTIONS
    from ..world.signs import NUM_SIGNS

    corruptions = list(corruptions or CORRUPTIONS)
    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad:
        raise ValueError(f"unknown corruption(s) {bad}; known: {', '.join(CORRUPTIONS)}")
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    if not 1 <= severity <= 5:
        raise ValueError("severity must be 1..5")
    gradual = setting == "gradual"
    plan = [(c, s) for c in corruptions for s in (GRADUAL_SEVERITIES if gradual else (severity,))]
    noise_seed = stream_seeds(seed)["noise_seed"]
    _, y = clean_crops(n, HELDOUT_CLS_SEED, cache_dir, progress=progress and n >= 1000)
    needed = sorted(set(plan), key=plan.index)
    it: Iterable = needed
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(needed, desc="corrupt held-out crops (cached)", unit="domain")
    data = {cs: corrupted_crops(n, cs[0], cs[1], HELDOUT_CLS_SEED, cache_dir, noise_seed) for cs in it}
    # crop order within each domain: as generated for seed 0 (the original protocol), else seeded per
    # domain; ``shuffle``: one order drawn from the seed for every domain (the reference loader)
    if shuffle:
        orders = [np.random.default_rng([seed, 43]).permutation(n)] * len(plan)
    else:
        orders = [np.arange(n) if seed == 0 else np.random.default_rng([seed, 41, di]).permutation(n)
                  for di in range(len(plan))]

    def dom(c: str, s: int) -> str:
        return f"{c}@{s}" if gradual else c

    def chunks() -> Iterator[Chunk]:
        if setting == "mixed":
            xs = np.concatenate([data[cs] for cs in plan])
            ys = np.concatenate([y] * len(plan))
            ds = np.repeat([dom(*cs) for cs in plan], n)
            order = np.random.default_rng([seed, 31]).permutation(len(xs))
            for k, sl in enumerate(_split(len(order), batch_size)):
                idx = order[sl]
                yield Chunk(xs[idx], ys[idx], list(ds[idx]), list(range(sl.start, sl.stop)))
            return
        pos = 0
        for di, cs in enumerate(plan):
            for k, sl in enumerate(_split(n, batch_size)):
                reset = setting == "reset_each_shift" and k == 0 and di > 0
                idx = orders[di][sl]
                yield Chunk(data[cs][idx], y[idx], [dom(*cs)] * (sl.stop - sl.start),
                            list(range(pos + sl.start, pos + sl.stop)), reset=reset)
            pos += n

    col_dom = {c: dom(c, 5 if gradual else severity) for c in corruptions}
    info = {"data": f"{n} held-out sign crops per domain (ClearNoon, crop seed {HELDOUT_CLS_SEED}), "
                    f"{'severities ' + '-'.join(map(str, GRADUAL_SEVERITIES)) if gradual else f'severity {severity}'}",
            "corruptions": corruptions, "n_per_domain": n, "domains_in_order": [dom(*cs) for cs in plan],
            "seed": seed, "noise_seed": noise_seed,
            "crop_order": (f"shuffled by seed {seed} (the same order in every domain)" if shuffle else
                           "as generated" if seed == 0 else f"permuted per domain (rng [{seed}, 41, domain])")}
    return BenchStream("corruptions", "cls", NUM_SIGNS, setting, batch_size, corruptions, col_dom,
                       n * len(plan), chunks, info, "sample")


# ------------------------------------------------------------------------------------ segmentation
def sequence_frames(sequence: str, *, start: int = 0, stop: int | None = None, stride: int = 1,
                    size=(128, 256), workers: int = 2, cache_dir: Path = DEFAULT_CACHE,
                    progress: bool = True, world_seed: int | None = None, view: str = "front") -> dict[str, np.ndarray]:
    """Rendered frames of a sequence in world ``world_seed`` (default: the schedule's seed, 0 for the
    shipped ones) seen by the car's camera ``view`` (``world.views``), cached: ``rgb``, ``labels``,
    ``index``, ``domain`` and ``weather`` (JSON). The front view keeps its earlier cache key."""
    import dataclasses

    from ..world.schedule import load_schedule
    from ..world.sequences import iter_sequence

    sched = load_schedule(sequence)
    default_world = sched.seed
    if world_seed is not None and int(world_seed) != sched.seed:
        sched = dataclasses.replace(sched, seed=int(world_seed))
    stop = sched.frames if stop is None else int(stop)
    if not sched.loop:
        stop = min(stop, sched.frames)
    idx = range(int(start), stop, int(stride))
    if len(idx) == 0:
        raise ValueError(f"sequence {sequence}: no frames in range({start}, {stop}, {stride})")
    extra = {} if view == "front" else {"view": view}
    key = cache_key(kind="frames", seq=sequence, sched=repr(sched), start=start, stop=stop, stride=stride,
                    size=list(size), **extra)

    def build():
        from tqdm.auto import tqdm
        frames = list(tqdm(iter_sequence(sched, size=tuple(size), start=start, stop=stop, stride=stride,
                                         workers=workers, view=view), total=len(idx),
                           desc=f"render {sequence}{'' if view == 'front' else ' ' + view} (cached)",
                           unit="frame", disable=not progress))
        return {"rgb": np.stack([f.rgb for f in frames]), "labels": np.stack([f.labels for f in frames]),
                "index": np.array([f.index for f in frames], np.int64),
                "domain": np.array([f.domain for f in frames]),
                "weather": np.array(json.dumps([f.weather.as_dict() for f in frames]))}

    world = "" if sched.seed == default_world else f"_w{sched.seed}"
    world += "" if view == "front" else f"_{view}"
    name = f"{sequence}_{size[0]}x{size[1]}_{start}-{stop}-{stride}{world}_{key}.npz"
    return cached_npz(Path(cache_dir) / "seg" / name, build)


def world_seg_stream(sequence: str, *, setting: str = "continual", batch_size: int = 8, start: int = 0,
                     stop: int | None = None, stride: int = 1, size=(128, 256), seed: int = 0, workers: int = 2,
                     cache_dir: Path = DEFAULT_CACHE, progress: bool = True, view: str = "front") -> BenchStream:
    """``view``: the car's camera (``world.views``); a camera other than the front one names the
    stream ``<sequence>@<view>``, so the streams of several cameras stay apart in one report."""
    from ..world.classes import NUM_CLASSES
    from ..world.schedule import load_schedule

    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    if setting == "gradual":
        raise ValueError("setting 'gradual' is for the corruption benchmark; the driving sequences change "
                         "gradually by construction (use continual)")
    sched = load_schedule(sequence)
    world_seed = stream_seeds(seed, sched.seed)["world_seed"]
    d = sequence_frames(sequence, start=start, stop=stop, stride=stride, size=size, workers=workers,
                        cache_dir=cache_dir, progress=progress, world_seed=world_seed, view=view)
    rgb, labels, index = d["rgb"], d["labels"], d["index"]
    domains = [str(v) for v in d["domain"]]
    weather = json.loads(str(d["weather"]))
    n = len(rgb)
    order = list(range(n))
    if setting == "mixed":
        order = list(np.random.default_rng([seed, 37]).permutation(n))

    def chunks() -> Iterator[Chunk]:
        if setting == "reset_each_shift":  # batches never straddle a domain change
            groups: list[list[int]] = []
            for i in order:
                if groups and domains[groups[-1][-1]] == domains[i] and len(groups[-1]) < batch_size:
                    groups[-1].append(i)
                else:
                    groups.append([i])
        else:
            groups = [order[sl] for sl in _split(n, batch_size)]
        prev = None
        for g in groups:
            reset = setting == "reset_each_shift" and prev is not None and domains[g[0]] != prev
            prev = domains[g[-1]]
            yield Chunk(rgb[g], labels[g], [domains[i] for i in g], [int(index[i]) for i in g], reset,
                        [weather[i] for i in g])

    present = [dm for dm in sched.domains if dm in set(domains)]
    # domain changes between consecutive frames of the stream, and whether the weather switched at once
    changes = [{"frame": int(index[i]), "previous": domains[i - 1], "domain": domains[i],
                "instant": sched.is_step_between(sched.frame_time(int(index[i - 1])), sched.frame_time(int(index[i])))}
               for i in range(1, n) if domains[i] != domains[i - 1]]
    info = {"data": f"sequence {sequence} (world seed {world_seed}), frames {start}..{(stop or sched.frames) - 1} "
                    f"every {stride}: {n} frames at {size[0]}x{size[1]}", "frames": n, "stride": stride,
            "seed": seed, "world_seed": world_seed, "fps": sched.fps, "domain_changes": changes, "view": view}
    cycle = int(round(sched.period * sched.fps)) if sched.loop and sched.period > 0 else None
    name = sequence if view == "front" else f"{sequence}@{view}"
    return BenchStream(name, "seg", NUM_CLASSES, setting, batch_size, present, {c: c for c in present}, n,
                       chunks, info, "frame", cycle)


# ------------------------------------------------------------------------------------ public datasets
def public_stream(dataset: str, root, *, setting: str = "continual", batch_size: int | None = None,
                  severity: int = 5, num_samples: int | None = None, corruptions=None, sequence: str | None = None,
                  seed: int = 1, image_size=None) -> BenchStream:
    """A public benchmark through ``datasets.build_stream`` (data never downloaded)."""
    from ..datasets import build_stream

    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    key = dataset.lower().replace("-", "_")
    gradual = setting == "gradual"
    if gradual and key not in ("cifar10_c", "cifar100_c", "imagenet_c"):
        raise ValueError("setting 'gradual' needs a corruption dataset (cifar10_c, cifar100_c, imagenet_c)")
    sev = list(GRADUAL_SEVERITIES) if gradual else severity
    ds_setting = {"mixed": "mixed_domains", "gradual": "continual"}.get(setting, setting)
    kw: dict[str, Any] = dict(severity=sev, batch_size=batch_size, setting=ds_setting, num_samples=num_samples,
                              shuffle_seed=seed, corruptions=corruptions)
    if key == "carlatta":
        kw.update(sequence=sequence, image_size=image_size)
    elif key == "folder" and image_size is not None:
        kw.update(image_size=image_size)
    s = build_stream(dataset, root, **kw)
    if s.num_classes is None:
        raise ValueError(f"{dataset}: the benchmark needs labelled data")

    def chunks() -> Iterator[Chunk]:
        prev = None
        pos = 0
        for b in s:
            bsz = int(b.images.shape[0])
            reset = setting == "reset_each_shift" and prev is not None and b.domain != prev
            prev = b.domain
            if b.labels is None:
                raise ValueError(f"{dataset}: unlabelled batch in domain {b.domain}")
            yield Chunk(b.images, b.labels, [b.domain] * bsz, list(range(pos, pos + bsz)), reset)
            pos += bsz

    if gradual:
        names = list(dict.fromkeys(d.rsplit("_", 1)[0] for d in s.source_domains))
        col_dom = {c: f"{c}_5" for c in names}
    else:  # mixed: the stream only knows the batch's domain ('mixed'), so one column
        names = list(dict.fromkeys(s.domains))
        col_dom = {c: c for c in names}
    name = sequence if key == "carlatta" and sequence else key
    return BenchStream(name, s.task, int(s.num_classes), setting, s.batch_size, names, col_dom, s.num_samples,
                       chunks, dict(s.info), "frame" if s.task == "seg" else "sample")
