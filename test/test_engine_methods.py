"""Engine: every method on cls + seg, reset, state round trip, config errors, safety."""
from __future__ import annotations

import copy
import io

import pytest
import torch

from engine_fixtures import images, tiny_cls, tiny_seg
from tta_perception.engine import build_method, list_methods
from tta_perception.engine.losses import ema_update

torch.set_num_threads(1)

ALL = ["source", "norm", "tent", "eata", "sar", "cotta", "rmt", "dplot"]
ADAPTING = ["tent", "eata", "sar", "cotta", "rmt", "dplot"]


def make(name, task="cls", seed=0, **kw):
    model = tiny_cls(seed) if task == "cls" else tiny_seg(seed)
    opts = dict(collapse_reset=False)
    if name in ("eata", "sar"):
        opts["e_margin"] = 1.0  # threshold ln C: the untrained tiny model is unsure, keep samples
    if name == "eata":
        opts["d_margin"] = 1.01  # every cosine passes the redundancy filter
    if name == "sar":
        opts["reset_constant"] = 0.0
    if name == "dplot":
        opts["blocks"] = ["block1"]
    if name == "rmt":
        opts["prototypes"] = torch.randn(model.num_classes, 8, generator=torch.Generator().manual_seed(1))
    if name == "cotta":
        opts["n_augmentations"] = 2
    opts.update(kw)
    return build_method(name, model, **opts)


def params_of(method):
    return {f"{k}.{n}": t.detach().clone() for k, m in method.modules.items() for n, t in m.state_dict().items()}


def test_registry_lists_all_methods():
    assert set(ALL) <= set(list_methods())


@pytest.mark.parametrize("task", ["cls", "seg"])
@pytest.mark.parametrize("name", ALL)
def test_method_runs_with_right_shapes(name, task):
    torch.manual_seed(0)
    m = make(name, task)
    x = images(4)
    before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    out = m.step(x)
    out = m.step(images(4, seed=1))
    expect = (4, m.num_classes) if task == "cls" else (4, m.num_classes, 16, 16)
    assert tuple(out.shape) == expect and torch.isfinite(out).all()
    assert tuple(m.predict(x).shape) == expect
    assert m.stats["steps"] == 2 and m.stats["nan_skips"] == 0
    moved = any(not torch.equal(before[n], p) for n, p in m.model.named_parameters())
    assert moved == (name in ADAPTING)
    if name in ADAPTING:
        assert m.stats["updates"] == 2


@pytest.mark.parametrize("name", ALL)
def test_reset_restores_source_state_exactly(name):
    torch.manual_seed(0)
    m = make(name, "cls")
    src = params_of(m)
    for i in range(3):
        m.step(images(4, seed=i))
    if name in ADAPTING:
        assert any(not torch.equal(src[k], v) for k, v in params_of(m).items())
    m.reset()
    after = params_of(m)
    assert after.keys() == src.keys()
    assert all(torch.equal(src[k], after[k]) for k in src)
    for opt in m.optimizers.values():
        assert len(opt.state) == 0  # fresh optimiser moments
    assert m.stats["resets"] == 1


@pytest.mark.parametrize("task", ["cls", "seg"])
@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name, task):
    torch.manual_seed(0)
    a = make(name, task)
    for i in range(2):
        a.step(images(4, seed=i))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # plain tensors/dicts only
    b = make(name, task)
    b.load_state_dict(state)
    pa, pb = params_of(a), params_of(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    torch.manual_seed(5)
    ya = a.step(images(4, seed=9))
    torch.manual_seed(5)
    yb = b.step(images(4, seed=9))
    assert torch.allclose(ya, yb, atol=1e-6)
    pa, pb = params_of(a), params_of(b)
    assert all(torch.allclose(pa[k], pb[k], atol=1e-6) for k in pa)


def test_load_state_dict_rejects_other_method():
    a, b = make("tent"), make("norm")
    with pytest.raises(ValueError, match="tent"):
        b.load_state_dict(a.state_dict())


def test_unknown_config_key_is_a_clear_error():
    with pytest.raises(ValueError) as e:
        build_method("tent", tiny_cls(), lrr=0.1)
    assert "lrr" in str(e.value) and "lr" in str(e.value) and "allowed" in str(e.value)
    with pytest.raises(ValueError, match="unknown config key"):
        build_method("tent", tiny_cls(), {"bogus": 1})
    with pytest.raises(ValueError, match="unknown method"):
        build_method("nope", tiny_cls())
    with pytest.raises(ValueError, match="lr must be > 0"):
        build_method("tent", tiny_cls(), lr=0)
    with pytest.raises(ValueError, match="bool"):
        build_method("tent", tiny_cls(), episodic="yes")


def test_config_accepts_dict_dataclass_and_coerces():
    from tta_perception.engine.methods.tent import TentConfig
    m = build_method("tent", tiny_cls(), {"lr": 1, "blocks": ["block1"]})
    assert m.cfg.lr == 1.0 and isinstance(m.cfg.lr, float) and m.cfg.blocks == ("block1",)
    m = build_method("tent", tiny_cls(), TentConfig(lr=5e-4), optimizer="sgd")
    assert m.cfg.lr == 5e-4 and m.cfg.optimizer == "sgd"


def test_tent_block_selection_option_adapts_only_those_blocks():
    m = make("tent", blocks=["block2"])
    before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    m.step(images(4))
    for n, p in m.model.named_parameters():
        assert (not torch.equal(before[n], p)) == n.startswith("block2."), n
    t = make("tent")  # default: only norm-layer affine parameters
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.step(images(4))
    changed = {n for n, p in t.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(".bn" in n or n.startswith("stem.1") for n in changed)


def test_ema_formula():
    t, s = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = [p.detach().clone() for p in t.parameters()]
    ema_update(t, s, 0.999)
    for a, b, c in zip(t.parameters(), t0, s.parameters()):
        assert torch.allclose(a, 0.999 * b + 0.001 * c, atol=1e-7)


@pytest.mark.parametrize("name", ["tent", "dplot", "cotta"])
def test_nan_loss_skips_update_and_restores_last_good_state(name):
    m = make(name)
    m.step(images(4))
    m.step(images(4, seed=1))  # the last-good snapshot is now refreshed in place
    good = params_of(m)
    good_opt = copy.deepcopy({k: o.state_dict() for k, o in m.optimizers.items()})
    bad = images(4)
    bad[0, 0, 0, 0] = float("nan")
    m.step(bad)  # BN running buffers were updated with NaN in the forward: must be restored
    assert m.stats["nan_skips"] == 1 and m.stats["updates"] == 2
    now = params_of(m)
    assert all(torch.equal(good[k], now[k]) for k in good)
    for k, o in m.optimizers.items():
        for pid, st in o.state_dict()["state"].items():
            for key, v in st.items():
                assert torch.equal(v, good_opt[k]["state"][pid][key]), (k, pid, key)
    m.step(images(4, seed=3))
    assert m.stats["updates"] == 3 and all(torch.isfinite(v).all() for v in params_of(m).values())


def test_nonfinite_parameters_after_step_are_restored():
    m = make("tent", lr=1.0)
    m.step(images(4))
    good = params_of(m)
    p = m.model.block1.bn1.weight
    h = p.register_hook(lambda g: torch.full_like(g, float("inf")))
    m.step(images(4, seed=1))
    h.remove()
    assert m.stats["nan_skips"] == 1
    now = params_of(m)
    assert all(torch.equal(good[k], now[k]) for k in good)


def test_collapse_resets_to_source_and_is_counted():
    model = tiny_cls()
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([50.0, 0, 0, 0, 0]))  # everything predicted as class 0
    m = build_method("tent", model, collapse_window=3, collapse_max_fraction=0.9)
    src = params_of(m)
    for i in range(3):
        m.step(images(4, seed=i))
    assert m.stats["collapse_resets"] == 1 and m.stats["resets"] == 1
    assert all(torch.equal(src[k], v) for k, v in params_of(m).items())
    assert m.stats["dominant_fraction"] == 1.0
    off = build_method("tent", copy.deepcopy(model), collapse_reset=False, collapse_window=3)
    for i in range(4):
        off.step(images(4, seed=i))
    assert off.stats["collapse_resets"] == 0


def test_sar_model_recovery_is_counted():
    m = make("sar", reset_constant=100.0)  # any loss EMA is below: recover after the first update
    m.step(images(4))
    assert m.stats["method_resets"] == 1 and m.stats["resets"] == 1


def test_eata_fisher_from_source_batches():
    batches = [(images(4, seed=i), torch.zeros(4, dtype=torch.long)) for i in range(2)]
    m = make("eata", fisher_batches=batches, fisher_alpha=2000.0)
    assert m.stats["fisher"] is True and len(m.fishers) > 0
    m.step(images(4))
    assert m.stats["updates"] == 1
    assert make("eata").stats["fisher"] is False


def test_episodic_resets_before_every_batch():
    m = make("tent", episodic=True)
    src = params_of(m)
    a = m.step(images(4))
    m.step(images(4, seed=1))
    b = m.step(images(4))
    assert torch.allclose(a, b, atol=1e-6)
    assert any(not torch.equal(src[k], v) for k, v in params_of(m).items())


def test_input_validation():
    m = make("tent")
    with pytest.raises(ValueError, match="B, 3, H, W"):
        m.step(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="float"):
        m.step(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("task", ["cls", "seg"])
@pytest.mark.parametrize("name", ALL)
def test_a_nan_frame_never_reaches_the_state_on_any_path(name, task):
    """Every method, every path that can change state: a NaN frame in the batch (which also makes
    EATA's and SAR's entropy filters reject every sample, the path that used to skip the guard)
    leaves every module tensor finite and equal to the state before the step."""
    kw = {"e_margin": 0.4} if name in ("eata", "sar") else {}  # the official threshold: NaN entropy fails it
    m = make(name, task, **kw)
    m.step(images(4))
    before = params_of(m)
    bad = images(4, seed=1)
    bad[:, :, 0, 0] = float("nan")  # every sample: the filters reject them all
    out = m.step(bad)
    assert not torch.isfinite(out).all()  # the prediction of a NaN frame is what it is
    now = params_of(m)
    assert all(torch.isfinite(v).all() for v in now.values() if v.is_floating_point())
    assert all(torch.equal(before[k], now[k]) for k in before), [k for k in before if not torch.equal(before[k], now[k])]
    if name != "source":
        assert m.stats["nan_skips"] >= 1
    clean = m.step(images(4, seed=2))  # and the next clean batch is predicted finitely
    assert torch.isfinite(clean).all() and torch.isfinite(m.predict(images(4, seed=3))).all()


def test_nan_batches_do_not_feed_collapse_detection():
    m = make("tent", collapse_reset=True, collapse_window=3, collapse_max_fraction=0.9)
    m.step(images(4))
    bad = images(4, seed=1)
    bad[:, :, 0, 0] = float("nan")
    for _ in range(12):
        m.step(bad)
    assert m.stats["nan_skips"] == 12 and m.stats["collapse_resets"] == 0 and m.stats["resets"] == 0


@pytest.mark.parametrize("name", ALL)
def test_predictors_are_the_inference_modules(name):
    from tta_perception.engine import method_class

    assert tuple(make(name).inference_modules()) == method_class(name).PREDICTORS
