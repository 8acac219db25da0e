"""Benchmark method names: the engine's methods plus the DPLOT paper's ablations as variants.

A variant is an engine method with fixed config overrides and a rule for the phase-A bundle:
``full`` (warmed student/teacher, selected blocks, prototypes), ``blocks`` (only the selected
blocks, for Tent/EATA/SAR + block selection) or ``none``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Variant:
    name: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    bundle: str = "none"     # none | blocks | full
    prior: bool = True       # a published prior method (candidate for "best other method")
    doc: str = ""
    domain_memory: bool = False  # streaming: resume a known domain's adapted state (engine.domains)
    fused: bool = False          # streaming seg: the base method's outputs fused over time (scored in its run)
    guard: bool = False          # streaming seg: the collapse guard watches the run (runtime.guard)

    @property
    def video(self) -> bool:
        """Follows the optical flow between consecutive frames (fused outputs, temporal pseudo-labels):
        without them the row equals its base method's."""
        return self.fused or bool(self.overrides.get("temporal_pl"))


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("source", "source", doc="source model, no adaptation"),
    Variant("norm", "norm", doc="BN test statistics (BN-1)"),
    Variant("tent", "tent", doc="entropy minimisation of the BN affine parameters"),
    Variant("eata", "eata", doc="reliable/non-redundant entropy minimisation + Fisher anchor (source renders)"),
    Variant("sar", "sar", doc="sharpness-aware reliable entropy minimisation with model recovery"),
    Variant("cotta", "cotta", doc="mean teacher + augmentation-averaged pseudo-labels + stochastic restore"),
    Variant("rmt", "rmt", bundle="full", doc="robust mean teacher (source-free); cls: its own warm-up at the test "
            "batch size (rmt.py), seg: the bundle's; source prototypes from the bundle"),
    Variant("dplot", "dplot", bundle="full", prior=False, doc="DPLOT (block selection + paired views)"),
    Variant("dplot-nobs", "dplot", {"block_selection": False}, "full", False,
            "DPLOT ablation: entropy step on all parameters (no block selection)"),
    Variant("dplot-nobs-norm", "dplot", {"block_selection": False, "no_bs_params": "norm"}, "full", False,
            "DPLOT ablation: entropy step on the norm layers (Tent's parameters) instead of selected blocks"),
    Variant("dplot-nopair", "dplot", {"paired_views": False}, "full", False,
            "DPLOT ablation: no flipped view (pseudo-label = teacher on x)"),
    Variant("dplot-tpl", "dplot", {"temporal_pl": True}, "full", False,
            "DPLOT + temporal pseudo-labels: the previous frame's warped teacher output as a third view "
            "(streaming, consecutive frames; docs/video.md)"),
    Variant("dplot-tplr", "dplot", {"temporal_pl": True, "temporal_pl_mode": "recursive"}, "full", False,
            "DPLOT + recursive temporal pseudo-labels: the previous frame's warped temporal pseudo-label as the "
            "third view (an average along the flow over past frames; docs/video.md)"),
    Variant("tent+bs", "tent", bundle="blocks", prior=False, doc="Tent on DPLOT's selected blocks"),
    Variant("eata+bs", "eata", bundle="blocks", prior=False, doc="EATA on DPLOT's selected blocks"),
    Variant("sar+bs", "sar", bundle="blocks", prior=False, doc="SAR on DPLOT's selected blocks"),
)}

DEFAULT_METHODS = ("source", "norm", "tent", "eata", "sar", "cotta", "rmt", "dplot")
# every method with domain memory: '<method>+dm' (streaming protocol; `bench --domain-memory` adds them)
VARIANTS.update({f"{n}+dm": Variant(f"{n}+dm", VARIANTS[n].method, VARIANTS[n].overrides, VARIANTS[n].bundle,
                                    False, f"{VARIANTS[n].doc}, with domain memory", True)
                 for n in DEFAULT_METHODS if n not in ("source", "norm")})
# every variant with temporal output fusion: '<name>+tf' (fixed weight) and '<name>+tfa' (adaptive: the
# weight times the current frame's uncertainty) (streaming seg; `bench --temporal-fusion W
# [--temporal-fusion-mode]` adds them). Not separate runs: the base run scores its fused outputs too
# (bench/runner.py)
FUSION_SUFFIXES = {"+tf": "fixed", "+tfa": "adaptive"}
VARIANTS.update({f"{n}{sfx}": Variant(f"{n}{sfx}", v.method, v.overrides, v.bundle, False,
                                      f"{v.doc}, outputs fused over time (temporal_fusion, {mode})", v.domain_memory,
                                      True)
                 for n, v in list(VARIANTS.items()) for sfx, mode in FUSION_SUFFIXES.items()})


# every adapting method with the collapse guard: '<method>+g' (streaming seg; runtime/guard.py). A run of
# its own: the guard changes what the method adapts from once it recovers
VARIANTS.update({f"{n}+g": Variant(f"{n}+g", VARIANTS[n].method, VARIANTS[n].overrides, VARIANTS[n].bundle, False,
                                   f"{VARIANTS[n].doc}, with the collapse guard", guard=True)
                 for n in DEFAULT_METHODS if n not in ("source",)})


def fused_base(name: str) -> tuple[str, str]:
    """(base method, fusion mode) of a fused row: 'dplot+tfa' -> ('dplot', 'adaptive')."""
    for sfx, mode in FUSION_SUFFIXES.items():
        if name.endswith(sfx) and VARIANTS[name].fused:
            return name[:-len(sfx)], mode
    raise ValueError(f"{name!r} is not a fused row")
ABLATION_METHODS = ("dplot", "dplot-nobs", "dplot-nopair", "tent", "tent+bs", "eata", "eata+bs", "sar", "sar+bs")
QUICK_METHODS = ("source", "norm", "tent", "dplot")
GROUPS = {
    "default": DEFAULT_METHODS,
    "ablations": ABLATION_METHODS,
    "all": DEFAULT_METHODS + tuple(n for n in ABLATION_METHODS + ("dplot-nobs-norm",) if n not in DEFAULT_METHODS),
}


def resolve_methods(spec: str) -> list[str]:
    """'source,tent,dplot' / 'default' / 'ablations' / 'all' (groups may be mixed with names)."""
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        names = GROUPS.get(part, (part,))
        for n in names:
            if n not in VARIANTS:
                raise ValueError(f"unknown method {n!r}; known: {', '.join(VARIANTS)} "
                                 f"(groups: {', '.join(GROUPS)})")
            if n not in out:
                out.append(n)
    if not out:
        raise ValueError("no methods given")
    return out


def needs_bundle(names: list[str]) -> bool:
    return any(VARIANTS[n].bundle != "none" for n in names)


def build_variant(name: str, model: nn.Module, *, bundle=None, fisher_batches=None, rmt_warmup=None,
                  safety: bool = False, extra: dict[str, Any] | None = None):
    """The engine method for variant ``name`` on ``model`` (adapted in place). ``rmt_warmup``: RMT's own
    warm-up, a cached ``RMT.warmup_state()`` or source batches at the test batch size
    (``bench.prepare.rmt_warmup_state``).

    ``safety=False`` (paper protocol) turns off the engine's own additions, collapse reset and the
    NaN guard: the paper and the reference framework have neither, and the guard's per-step state
    snapshot would be counted in the adaptation cost."""
    from ..engine import build_method

    v = VARIANTS[name]
    kw: dict[str, Any] = dict(v.overrides)
    if not safety:
        kw.update(collapse_reset=False, nan_guard=False)
    if v.bundle != "none":
        if bundle is None:
            raise ValueError(f"method {name!r} needs the phase-A bundle (tta-perception prepare)")
        if v.bundle == "full":
            kw["bundle"] = bundle
        else:
            if not bundle.selected_blocks:
                raise ValueError(f"{name}: the bundle selected no block")
            kw["blocks"] = tuple(bundle.selected_blocks)
    if v.method == "eata" and fisher_batches is not None:
        kw["fisher_batches"] = fisher_batches
    if v.method == "rmt" and rmt_warmup is not None:
        kw["warmup_state" if isinstance(rmt_warmup, dict) else "warmup_batches"] = rmt_warmup
    kw.update(extra or {})
    return build_method(v.method, model, **kw)
