"""Public TTA benchmarks and a user's recordings as test streams, plus source data for DPLOT's prepare.

Data is never downloaded: every loader reads the public layout from a path the user gives.

- ``build_stream(dataset, root, ...)``: ``cifar10_c``, ``cifar100_c``, ``imagenet_c``, ``carlatta``,
  ``folder``; yields ``StreamBatch(images, labels, domain)`` in the paper's protocol order.
- ``build_source_loader(dataset, root, ...)``: labelled source batches ``(images, labels)``.

Missing files raise ``FileNotFoundError``; unusable ones ``DatasetError`` (a ``ValueError``); both
name the file.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ._files import DatasetError, default_workers
from .carla import SEQUENCES as CARLA_SEQUENCES
from .classes import CARLA_CLASSES, CIFAR10_CLASSES, CIFAR100_CLASSES
from .corruptions import CORRUPTIONS, SEVERITIES
from .source import SourceLoader
from .stream import IGNORE_INDEX, SETTINGS, Stream, StreamBatch, reference_order

DATASETS = ("cifar10_c", "cifar100_c", "imagenet_c", "carlatta", "folder")

# Batch sizes of the paper / reference framework per benchmark
DEFAULT_BATCH_SIZE = {"cifar10_c": 200, "cifar100_c": 200, "imagenet_c": 64, "carlatta": 1, "folder": 1}


def build_stream(dataset: str, root, *, severity=5, batch_size: Optional[int] = None,
                 setting: str = "continual", num_samples: Optional[int] = None,
                 shuffle_seed: Optional[int] = 1, corruptions: Optional[Sequence[str]] = None,
                 num_workers: Optional[int] = None, subset_file=None, sequence: Optional[str] = None,
                 list_file=None, image_size=None) -> Stream:
    """The test stream of a benchmark, in the reference framework's order.

    - ``severity``: 1..5, or a list (domains ``<corruption>_<severity>``, corruption-major).
    - ``batch_size``: default 200 (CIFAR), 64 (ImageNet-C), 1 (CarlaTTA, folder).
    - ``setting``: ``continual`` / ``reset_each_shift`` (same data; resets are the engine's business),
      ``mixed_domains`` (all domains shuffled together), ``correlated`` (each domain sorted by label).
    - ``num_samples``: images per domain (the reference's CORRUPTION.NUM_EX); ``None`` = all.
    - ``shuffle_seed``: each domain is shuffled as the reference's ``random.seed(seed);
      random.shuffle`` does (RNG_SEED 1 by default); ``None`` keeps file order. CarlaTTA and folder
      streams are videos and always keep frame order.
    - ``corruptions``: subset/order of the 15 corruptions (default: all, standard order).
    - ``num_workers``: decoder processes for image files (default: a few; 0 for CIFAR).
    - ImageNet-C ``subset_file``: image list (``<wnid>/<file>`` lines); by default
      ``<root>/imagenet_test_image_ids.txt`` (RobustBench's 5,000 images) when present, else all.
    - CarlaTTA ``sequence`` (``day2night``, ``clear2fog``, ``clear2rain``, ``dynamic``,
      ``dynamic-slow``, ``highway`` or a list name) or ``list_file``; ``image_size`` (shorter side,
      default 1024 as in the reference; or (H, W); ``"native"`` keeps the rendered size).
    - folder ``image_size``: resize frames (default: native size).
    """
    key = dataset.lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples must be >= 1 or None, got {num_samples}")
    bs = DEFAULT_BATCH_SIZE[key] if batch_size is None else int(batch_size)
    common = dict(batch_size=bs, setting=setting, num_samples=num_samples)
    if key in ("cifar10_c", "cifar100_c"):
        from .corruptions import cifar_c_domains
        nc = 10 if key == "cifar10_c" else 100
        files, domains = cifar_c_domains(root, key, severity=severity, corruptions=corruptions, num_classes=nc)
        info = {"root": str(files.root), "severity": severity, "images_per_domain": files.n_per_severity}
        return Stream(key, domains, task="cls", num_classes=nc,
                      class_names=CIFAR10_CLASSES if nc == 10 else CIFAR100_CLASSES,
                      shuffle_seed=shuffle_seed, num_workers=num_workers or 0, info=info, **common)
    if key == "imagenet_c":
        from .classes import imagenet_classes
        from .corruptions import imagenet_c_domains
        domains, info = imagenet_c_domains(root, severity=severity, corruptions=corruptions,
                                           subset_file=subset_file, num_samples=num_samples)
        names = imagenet_classes() if info["classes_found"] == 1000 else ()
        info["severity"] = severity
        return Stream(key, domains, task="cls", num_classes=info["classes_found"], class_names=names,
                      shuffle_seed=shuffle_seed, info=info,
                      num_workers=default_workers() if num_workers is None else num_workers, **common)
    workers = default_workers() if num_workers is None else num_workers
    if key == "carlatta":
        from .carla import TEST_SIZE, carla_domain
        domain, info = carla_domain(root, sequence=sequence, list_file=list_file,
                                    image_size=TEST_SIZE if image_size is None else image_size)
        return Stream(key, [domain], task="seg", num_classes=len(CARLA_CLASSES), class_names=CARLA_CLASSES,
                      shuffle_seed=None, num_workers=workers, info=info, **common)
    from .folder import folder_domains
    domains, info = folder_domains(root, image_size=image_size)
    return Stream(key, domains, task="cls", num_classes=None, shuffle_seed=None, num_workers=workers,
                  info=info, **common)


def build_source_loader(dataset: str, root, *, batch_size: int = 128, num_samples: Optional[int] = None,
                        shuffle: bool = True, seed: int = 1, split: str = "train",
                        num_workers: Optional[int] = None, image_size=None, list_file=None,
                        drop_last: bool = False) -> SourceLoader:
    """Labelled source data of a benchmark (its ``-C`` name or the clean name works).

    ``cifar10``/``cifar100``: the python-pickle batches (``cifar-10-batches-py``,
    ``cifar-100-python``) under ``root``; ``imagenet``: ``root/train/<wnid>/*.JPEG`` (or ``root`` is
    that folder), resized to 256 and centre-cropped to 224 (``image_size`` changes the crop);
    ``carlatta``: the clear sequence (``clear_train.txt`` in ``root`` if present, else the ``clear``
    folder); ``folder``: ``root/<class>/<image>``. ``num_samples`` picks a fixed random subset
    (e.g. the ~50k warm-up samples); ``split='test'`` gives the clean test/val set.
    """
    from .source import source_domain
    domain, task, nc, names, info = source_domain(dataset, root, split=split, image_size=image_size,
                                                  list_file=list_file)
    from .source import ArrayDomain
    if num_workers is None:
        num_workers = 0 if isinstance(domain, ArrayDomain) else default_workers()
    return SourceLoader(domain, batch_size=batch_size, shuffle=shuffle, seed=seed, num_samples=num_samples,
                        num_workers=num_workers, drop_last=drop_last, task=task, num_classes=nc,
                        class_names=names, info=dict(info, dataset=dataset, split=split))


__all__ = [
    "build_stream", "build_source_loader", "Stream", "StreamBatch", "SourceLoader", "DatasetError",
    "DATASETS", "CORRUPTIONS", "SEVERITIES", "SETTINGS", "CARLA_SEQUENCES", "IGNORE_INDEX",
    "DEFAULT_BATCH_SIZE", "reference_order",
]
