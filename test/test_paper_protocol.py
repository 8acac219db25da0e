"""Baseline fidelity with the official code (RMT's own warm-up, EATA's d_margin and CoTTA's ap by the
number of classes), DPLOT's prediction split, the --paper-scale preset, and the seed intervals."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from engine_fixtures import images, tiny_cls, tiny_seg
from tta_perception.bench import streams
from tta_perception.bench.seeds import seed_table
from tta_perception.cli.main import main
from tta_perception.engine import build_method
from tta_perception.engine.config import by_num_classes
from tta_perception.engine.methods.cotta import AP_BY_CLASSES
from tta_perception.engine.methods.eata import D_MARGIN_BY_CLASSES

torch.set_num_threads(1)
CHEAP = ["gaussian_noise", "brightness", "contrast"]


def source_batches(n: int = 3, b: int = 4):
    return [(images(b, seed=10 + i), torch.arange(b) % 5) for i in range(n)]


def rmt(model=None, **kw):
    opts = dict(collapse_reset=False, nan_guard=False,
                prototypes=torch.randn(5, 8, generator=torch.Generator().manual_seed(1)))
    opts.update(kw)
    return build_method("rmt", model if model is not None else tiny_cls(), **opts)


# --------------------------------------------------------------------------- RMT's own warm-up
def test_rmt_own_warmup_keeps_its_adam_state_into_adaptation():
    m = rmt(warmup="own", warmup_batches=source_batches(), warmup_samples=24)     # 24 // 4 = 6 steps
    opt = m.optimizers["opt"]
    assert m.stats["warmup"] == "own" and m.stats["warmup_steps"] == 6
    adam_steps = {int(s["step"]) for s in opt.state.values()}
    assert adam_steps == {6}                          # every model parameter has 6 Adam steps of moments
    assert all(p in opt.state for p in m.model.parameters())
    assert not any(p in opt.state for p in m.projector.parameters())   # no grads in the warm-up (rmt.py)
    assert all(g["lr"] == m.cfg.lr for g in opt.param_groups)          # lr back to the final lr
    start = m.warmup_state()["optimizer"]             # what adaptation starts with ...
    now = opt.state_dict()
    for k, st in now["state"].items():                # ... is the optimiser of the warm-up
        assert all(torch.equal(st[f], start["state"][k][f]) for f in ("exp_avg", "exp_avg_sq"))
    m.step(images(4))
    assert {int(s["step"]) for p, s in opt.state.items() if any(p is q for q in m.model.parameters())} == {7}
    m.reset()                                          # reset returns to the warmed state, moments included
    assert {int(s["step"]) for p, s in opt.state.items() if any(p is q for q in m.model.parameters())} == {6}


def test_rmt_own_warmup_equals_the_shared_warmup_function_and_runs_at_the_test_batch_size():
    from tta_perception.engine.warmup import warmup_mean_teacher

    m = rmt(warmup="own", warmup_batches=source_batches(b=2), warmup_samples=8)    # batch 2: 4 steps
    assert m.stats["warmup_steps"] == 4
    ref = tiny_cls()
    r = warmup_mean_teacher(ref, source_batches(b=2), steps=4, lr=m.cfg.lr, ema=m.cfg.mt, beta=m.cfg.beta)
    src = m.warmup_state()
    assert all(torch.allclose(src["student"][k], v) for k, v in ref.state_dict().items())
    assert all(torch.allclose(src["teacher"][k], v) for k, v in r.teacher.state_dict().items())


def test_rmt_cached_warmup_state_gives_the_same_run():
    a = rmt(warmup="own", warmup_batches=source_batches(), warmup_samples=12)
    state = copy.deepcopy(a.warmup_state())
    b = rmt(warmup="own", warmup_state=state)
    assert b.stats["warmup_steps"] == 3
    torch.manual_seed(5)
    ya = a.step(images(4, seed=3))
    torch.manual_seed(5)
    yb = b.step(images(4, seed=3))
    assert torch.equal(ya, yb)
    with pytest.raises(ValueError, match="another RMT setup"):   # no projector: other optimiser groups
        rmt(warmup="own", warmup_state=state, prototypes=None)


def test_rmt_warmup_modes():
    from tta_perception.engine.phase_a import prepare_bundle

    bundle = prepare_bundle(tiny_cls(), source_batches(2), warmup_samples=8, max_batches=2)
    m = rmt(bundle=bundle, prototypes=None)                           # auto, no source data: the bundle
    assert m.stats["warmup"] == "bundle" and len(m.optimizers["opt"].state) == 0      # fresh Adam
    assert all(torch.equal(m.teacher.state_dict()[k], v) for k, v in bundle.teacher_state.items())
    m = rmt(bundle=bundle, prototypes=None, warmup_batches=source_batches(), warmup_samples=12)  # auto + data: own
    assert m.stats["warmup"] == "own" and m.stats["contrastive"]                     # bundle prototypes
    assert not torch.equal(m.teacher.state_dict()["fc.weight"], bundle.teacher_state["fc.weight"])
    m = rmt(bundle=bundle, prototypes=None, warmup_batches=source_batches(), warmup="bundle")
    assert m.stats["warmup"] == "bundle"
    m = rmt(prototypes=None, warmup="own", warmup_batches=source_batches(), warmup_samples=4)
    assert m.stats["contrastive"]                                     # prototypes from the source batches
    seg = build_method("rmt", tiny_seg(), collapse_reset=False,
                       warmup_batches=[(images(2), torch.zeros(2, 16, 16, dtype=torch.long))])
    assert seg.stats["warmup"] == "none"           # segmentation: auto keeps the bundle's (none given here)
    with pytest.raises(ValueError, match="needs source data"):
        rmt(warmup="own")
    with pytest.raises(ValueError, match="warmup must be"):
        rmt(warmup="fresh")


# --------------------------------------------------------------------------- d_margin / ap by classes
def test_eata_d_margin_and_cotta_ap_follow_the_official_configs_by_number_of_classes():
    d = {c: by_num_classes(D_MARGIN_BY_CLASSES, c) for c in (2, 10, 11, 12, 100, 126, 127, 200, 1000, 5000)}
    assert d == {2: 0.4, 10: 0.4, 11: 0.1, 12: 0.1, 100: 0.1, 126: 0.1, 127: 0.05, 200: 0.05, 1000: 0.05,
                 5000: 0.05}
    ap = {c: by_num_classes(AP_BY_CLASSES, c) for c in (10, 12, 100, 101, 126, 1000)}
    assert ap == {10: 0.92, 12: 0.72, 100: 0.72, 101: 0.1, 126: 0.1, 1000: 0.1}
    kw = dict(collapse_reset=False)
    assert build_method("eata", tiny_cls(num_classes=10), **kw).d_margin == 0.4        # CIFAR10
    assert build_method("eata", tiny_cls(num_classes=12), **kw).d_margin == 0.1        # signnet: CIFAR100
    assert build_method("eata", tiny_cls(num_classes=1000), **kw).d_margin == 0.05     # ImageNet
    assert build_method("eata", tiny_seg(num_classes=12), **kw).d_margin == 0.4        # seg keeps its value
    assert build_method("eata", tiny_cls(num_classes=12), d_margin=0.3, **kw).d_margin == 0.3
    assert build_method("cotta", tiny_cls(num_classes=10), **kw).ap == 0.92
    assert build_method("cotta", tiny_cls(num_classes=12), **kw).ap == 0.72
    assert build_method("cotta", tiny_cls(num_classes=1000), **kw).ap == 0.1
    assert build_method("cotta", tiny_seg(num_classes=12), **kw).ap == 0.9           # segmentation/cfgs/cotta.yaml
    assert build_method("cotta", tiny_cls(num_classes=12), ap=0.5, **kw).stats["ap"] == 0.5


def test_cotta_ap_decides_the_augmented_target():
    x = images(4)
    never = build_method("cotta", tiny_cls(), ap=0.0, n_augmentations=2, collapse_reset=False)
    always = build_method("cotta", tiny_cls(), ap=1.0, n_augmentations=2, collapse_reset=False)
    with torch.no_grad():
        assert torch.equal(never._teacher_target(x), never.teacher(x))   # confident enough: teacher alone
        torch.manual_seed(0)
        assert not torch.equal(always._teacher_target(x), always.teacher(x))


# --------------------------------------------------------------------------- DPLOT's prediction split
def test_dplot_prediction_split_matches_predict_with_on_the_same_batch():
    m = build_method("dplot", tiny_cls(), blocks=["block1"], collapse_reset=False)
    x = images(4)
    m.step(images(4, seed=1))
    before = {"model": copy.deepcopy(m.model), "teacher": copy.deepcopy(m.teacher)}
    expect = m.predict_parts(before, x)                       # the weights the step's forward sees
    y = m.step(x)
    parts = m.last_parts
    assert set(parts) == {"student", "teacher"}
    assert torch.allclose(parts["student"], expect["student"], atol=1e-5)
    assert torch.allclose(parts["teacher"], expect["teacher"], atol=1e-5)
    assert torch.allclose(parts["student"] + parts["teacher"], y, atol=1e-5)    # the paper's prediction
    with torch.no_grad():
        assert torch.allclose(m.predict_with(before, x), expect["student"] + expect["teacher"], atol=1e-5)
    nopair = build_method("dplot", tiny_cls(), blocks=["block1"], paired_views=False, collapse_reset=False)
    y = nopair.step(x)
    assert torch.allclose(nopair.last_parts["student"] + nopair.last_parts["teacher"], y, atol=1e-6)


def test_prediction_split_does_not_change_the_adaptation():
    a = build_method("dplot", tiny_cls(), blocks=["block1"], collapse_reset=False)
    b = build_method("dplot", tiny_cls(), blocks=["block1"], collapse_reset=False)
    for i in range(3):
        a.step(images(4, seed=i))
        b.step(images(4, seed=i))
        b.last_parts = None                    # a caller that never reads the split
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_bench_reports_the_split_and_rmt_own_warmup(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["bench", "--task", "cls", "--quick", "--random-init", "--methods", "source,rmt,dplot",
               "--corruptions", ",".join(CHEAP), "--n", "8", "--batch-size", "4", "--out", str(out),
               "--cache", str(tmp_path / "cache"), "--no-progress", "--no-plot", "--device", "cpu"])
    assert rc == 0
    assert "prediction split" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    st = res["streams"]["corruptions"]
    parts = st["parts"]["dplot"]
    assert set(parts) == {"student", "teacher"} and set(parts["student"]["cells"]) == set(CHEAP)
    dplot_run = next(r for r in res["runs"] if r["method"] == "dplot")
    assert set(dplot_run["parts"]) == {"student", "teacher"}
    assert (out / "parts_corruptions.csv").read_text().startswith("method,part,")
    assert res["rmt_warmup"]["batch_size"] == 4 and res["rmt_warmup"]["steps"] == 64 // 4   # quick: 64 samples
    assert st["rows"]["rmt"]["stats"]["warmup"] == "own"
    assert "source" not in st["parts"]


# --------------------------------------------------------------------------- --paper-scale and seeds
def _config(argv):
    import argparse

    from tta_perception.cli import bench as cli_bench

    p = argparse.ArgumentParser()
    cli_bench.add_arguments(p)
    return cli_bench.config_from_args(p.parse_args(argv))


def test_paper_scale_preset_settings():
    from tta_perception.bench.suite import PAPER_SCALE, default_out, prepare_settings

    cfg = _config(["--task", "cls", "--paper-scale"])
    assert (cfg.batch_size, cfg.n, cfg.shuffle, cfg.prepare_profile) == (200, PAPER_SCALE["n"], True, "official")
    assert cfg.seeds == [0, 1, 2] and cfg.seeds_for == ["dplot", "best2"] and cfg.paper_scale
    assert cfg.methods == ["source", "norm", "tent", "eata", "sar", "cotta", "rmt", "dplot"]
    s = prepare_settings(cfg)
    assert (s.samples, s.batch_size, s.warmup_samples) == (50_000, 128, 50_000)   # prepare --official
    assert str(default_out(cfg)).endswith("cls_continual_paper")
    cfg = _config(["--task", "cls", "--paper-scale", "--n", "100", "--seeds", "3"])   # explicit options win
    assert cfg.n == 100 and cfg.seeds == [3] and cfg.batch_size == 200
    plain = _config(["--task", "cls"])                          # the default command is unchanged
    assert (plain.batch_size, plain.n, plain.shuffle, plain.prepare_profile, plain.seeds, plain.seeds_for) == \
        (None, None, False, None, [0], None)
    with pytest.raises(ValueError, match="paper-scale"):
        _config(["--task", "seg", "--paper-scale"])
    with pytest.raises(ValueError, match="seeds-for"):
        _config(["--task", "cls", "--seeds-for", "bogus"])


def test_seed_methods_picks_dplot_and_the_two_best_prior_methods():
    from tta_perception.bench.suite import BenchConfig, seed_methods

    cfg = BenchConfig(task="cls", methods=["source", "norm", "tent", "cotta", "rmt", "dplot"],
                      seeds_for=["dplot", "best2"])
    rows = {"source": {"mean": 10.0}, "norm": {"mean": 30.0}, "tent": {"mean": 28.0}, "cotta": {"mean": 25.0},
            "rmt": {"mean": 26.0}, "dplot": {"mean": 20.0}}
    assert seed_methods(cfg, rows, "mean", "cls") == ["cotta", "rmt", "dplot"]   # source is no baseline to beat
    cfg.seeds_for = None
    assert seed_methods(cfg, rows, "mean", "cls") == cfg.methods


def test_shuffle_orders_every_domain_alike_per_seed(tmp_path):
    kw = dict(n=12, batch_size=5, corruptions=CHEAP, cache_dir=tmp_path, progress=False)
    plain = list(streams.world_cls_stream(**kw))
    s0 = list(streams.world_cls_stream(shuffle=True, seed=0, **kw))
    s0b = list(streams.world_cls_stream(shuffle=True, seed=0, **kw))
    s1 = list(streams.world_cls_stream(shuffle=True, seed=1, **kw))
    lab = lambda ch: np.concatenate([c.label_array() for c in ch])  # noqa: E731
    assert np.array_equal(lab(s0), lab(s0b)) and not np.array_equal(lab(s0), lab(s1))
    assert not np.array_equal(lab(s0), lab(plain))
    per_domain = lab(s0).reshape(3, 12)
    assert (per_domain == per_domain[0]).all()                         # the same order in every corruption
    assert sorted(per_domain[0]) == sorted(lab(plain)[:12])            # same crops, another order
    assert [len(c) for c in s0] == [len(c) for c in plain]


def test_seed_table_on_known_values():
    cols = [f"c{i}" for i in range(10)]
    runs = []
    for seed, (d, r) in enumerate([(20.0, 25.0), (22.0, 26.0), (21.0, 27.0)]):
        runs.append({"stream": "s", "method": "dplot", "seed": seed, "domains": {c: d for c in cols},
                     "parts": {"student": {"domains": {c: d + 10 for c in cols}}}})
        runs.append({"stream": "s", "method": "rmt", "seed": seed, "domains": {c: r for c in cols}})
    runs.append({"stream": "s", "method": "norm", "seed": 0, "domains": {c: 30.0 for c in cols}})
    t = seed_table({"streams": {"s": {"columns": cols}}, "runs": runs}, "s")
    rows = {r["row"]: r for r in t["rows"]}
    assert rows["dplot"]["mean"] == pytest.approx(21.0) and rows["dplot"]["n"] == 3
    assert rows["dplot"]["mean_ci"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert rows["dplot student"]["last5"] == pytest.approx(31.0)
    assert math.isnan(rows["norm"]["mean_ci"])                         # one seed: no interval
    (diff,) = t["paired"]                                              # norm has one seed: no pair
    assert diff["pair"] == "dplot - rmt" and diff["mean_diff"] == pytest.approx(-5.0)
    assert diff["ci"] == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # diffs -5, -4, -6
    assert diff["reading"] == "interval excludes 0"


def test_the_node_pipeline_keeps_the_bundle_warmup_for_rmt():
    from tta_perception.runtime import params as P
    from tta_perception.runtime.pipeline import Pipeline

    cfg = P.defaults()
    cfg.update(model="signnet", method="rmt", device="cpu", task="classification")
    pipe = Pipeline(cfg, background=False)
    try:
        assert pipe.method.cfg.warmup == "bundle" and pipe.method.stats["warmup"] == "bundle"
        assert pipe.bundle.endswith("signnet_dplot.bundle")
    finally:
        pipe.close()
