"""DPLOT: phase B behaviour (the issue's pinned properties) and phase A (selection, warm-up, bundle)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from engine_fixtures import Block, TinyCls, images, tiny_cls, tiny_seg
from tta_perception.engine import build_method
from tta_perception.engine.block_selection import (compute_prototypes, minmax_scale, score_block, select_blocks,
                                                    select_from_scores)
from tta_perception.engine.bundle import Bundle, BundleError, load_bundle, save_bundle
from tta_perception.engine.losses import symmetric_cross_entropy
from tta_perception.engine.phase_a import prepare_bundle
from tta_perception.engine.warmup import warmup_mean_teacher

torch.set_num_threads(1)


def dplot(task="cls", **kw):
    model = tiny_cls() if task == "cls" else tiny_seg()
    kw.setdefault("blocks", ["block1"])
    return build_method("dplot", model, collapse_reset=False, **kw)


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("task", ["cls", "seg"])
def test_entropy_step_moves_only_selected_blocks(task):
    m = dplot(task, lr_consistency=0.0)  # isolate step 1
    before = snapshot(m.model)
    m.step(images(4))
    for n, p in m.model.named_parameters():
        assert (not torch.equal(before[n], p)) == n.startswith("block1."), n


@pytest.mark.parametrize("task", ["cls", "seg"])
def test_consistency_step_moves_all_parameters(task):
    m = dplot(task, lr_entropy=0.0)  # isolate step 2
    before = snapshot(m.model)
    m.step(images(4))
    unchanged = [n for n, p in m.model.named_parameters() if torch.equal(before[n], p)]
    assert unchanged == []


def test_both_gradients_are_taken_at_the_same_point():
    m = dplot()
    x = images(4)
    ref = copy.deepcopy(m.model)
    teacher = copy.deepcopy(m.teacher)
    r = m.compute_gradients(x)
    v = torch.cat([x, x.flip(-1)])
    z = ref(v)
    with torch.no_grad():
        zt = teacher(v)
    pseudo = (zt[:4] + zt[4:]) / 2
    l_pc = symmetric_cross_entropy(z[:4], pseudo).mean() + symmetric_cross_entropy(z[4:], pseudo).mean()
    l_ent = -(z.softmax(1) * z.log_softmax(1)).sum(1).mean()
    g_pc = torch.autograd.grad(l_pc, list(ref.parameters()), retain_graph=True)
    g_ent = torch.autograd.grad(l_ent, list(ref.block1.parameters()))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(r["g_pc"], g_pc))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(r["g_ent"], g_ent))
    # prediction: the four logits
    assert torch.allclose(r["pred"], (z[:4] + z[4:] + zt[:4] + zt[4:]).detach(), atol=1e-5)


def test_teacher_is_ema_of_student():
    m = dplot()
    t0 = snapshot(m.teacher)
    m.step(images(4))
    s1 = snapshot(m.model)
    for n, p in m.teacher.named_parameters():
        assert torch.allclose(p, 0.999 * t0[n] + 0.001 * s1[n], atol=1e-7), n


@pytest.mark.parametrize("task", ["cls", "seg"])
def test_flip_pairing_maps_the_flipped_view_back(task):
    """Correct pairing makes prediction and losses flip-equivariant; without mapping the seg output
    back, a random conv net would break this."""
    m = dplot(task)
    x = images(4)
    a, b = m.compute_gradients(x), m.compute_gradients(x.flip(-1))
    back = (lambda y: y.flip(-1)) if task == "seg" else (lambda y: y)
    assert torch.allclose(a["pred"], back(b["pred"]), atol=1e-4)
    assert torch.allclose(a["l_pc"], b["l_pc"], atol=1e-5)
    assert torch.allclose(a["l_ent"], b["l_ent"], atol=1e-5)


def test_seg_without_flip_back_would_not_be_equivariant():
    """Sanity for the test above: the tiny seg net is not flip-equivariant on its own."""
    m = tiny_seg().eval()
    x = images(2)
    with torch.no_grad():
        assert not torch.allclose(m(x), m(x.flip(-1)).flip(-1), atol=1e-3)


def test_ablations():
    m = dplot(block_selection=False, blocks=None, lr_consistency=0.0)
    before = snapshot(m.model)
    m.step(images(4))
    assert all(not torch.equal(before[n], p) for n, p in m.model.named_parameters())  # 'all'
    m = dplot(block_selection=False, blocks=None, no_bs_params="norm", lr_consistency=0.0)
    before = snapshot(m.model)
    m.step(images(4))
    changed = {n for n, p in m.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(".bn" in n or n.startswith("stem.1") for n in changed)
    m = dplot(paired_views=False)
    r = m.compute_gradients(images(4))
    assert r["pred"].shape == (4, 5)
    with pytest.raises(ValueError, match="selected blocks"):
        build_method("dplot", tiny_cls())


# ---------------------------------------------------------------- phase A
def test_selection_rule():
    sel, scaled = select_from_scores({"a": 2.0, "b": 0.0, "c": 1.5, "d": 1.75})
    assert scaled == pytest.approx({"a": 1.0, "b": 0.0, "c": 0.75, "d": 0.875})
    assert sel == ["a", "d"]  # strictly above 0.75
    assert minmax_scale([2.0, 2.0]) == [0.0, 0.0]


class Inert(nn.Module):
    """A block whose parameters cannot change the output: out = x + 0·conv(x)."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + 0.0 * self.conv(x)


def test_selection_on_a_constructed_model():
    torch.manual_seed(0)
    model = TinyCls(num_classes=3)
    model.block1 = Inert(8)            # updating it leaves the class prototypes exactly unchanged
    model.candidate_blocks = ("block1", "block2")
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(6, 3, 12, 12, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])) for _ in range(3)]
    assert score_block(model, "block1", batches, 3, lr=0.05) == pytest.approx(1.0, abs=1e-9)
    res = select_blocks(model, batches, lr=0.05)
    assert res.scores["block2"] < 1.0
    assert res.selected == ["block1"] and res.scaled_scores == {"block1": 1.0, "block2": 0.0}


def test_prototypes_cls_and_seg():
    m = tiny_cls()
    x = images(6)
    y = torch.tensor([0, 0, 1, 1, 1, 3])
    p = compute_prototypes(m, [(x, y)], 5)
    assert p.shape == (5, 8) and torch.isnan(p[2]).all() and torch.isfinite(p[0]).all()
    s = tiny_seg()
    ys = torch.randint(0, 4, (2, 16, 16))
    ys[0] = 255
    ps = compute_prototypes(s, [(images(2), ys)], 4)
    assert ps.shape == (4, 8)


def test_warmup_lr_ramp_and_ema():
    m = tiny_cls()
    batches = [(images(4, seed=i), torch.zeros(4, dtype=torch.long)) for i in range(2)]
    r = warmup_mean_teacher(m, batches, steps=3, lr=3e-3, ema=0.0)
    assert r.lrs == pytest.approx([1e-3, 2e-3, 3e-3])
    for (n, a), b in zip(m.named_parameters(), r.teacher.parameters()):
        assert torch.equal(a, b), n  # ema 0: teacher == student
    m2 = tiny_cls()
    r = warmup_mean_teacher(m2, batches, num_samples=8, ema=1.0)
    assert r.steps == 2
    for a, b in zip(tiny_cls().parameters(), r.teacher.parameters()):
        assert torch.equal(a, b)  # ema 1: teacher frozen at the source


def test_bundle_round_trip_and_errors(tmp_path):
    m = tiny_cls()
    batches = [(images(4, seed=i), torch.tensor([0, 1, 2, 3])) for i in range(2)]
    b = prepare_bundle(m, batches, warmup_samples=8, max_batches=2, model_name="tiny")
    assert b.selected_blocks and set(b.scores) == set(m.candidate_blocks)
    path = tmp_path / "b.pt"
    save_bundle(b, path)
    b2 = load_bundle(path)
    assert b2.selected_blocks == b.selected_blocks and b2.metadata["model"] == "tiny"
    assert all(torch.equal(b.teacher_state[k], b2.teacher_state[k]) for k in b.teacher_state)
    d = build_method("dplot", tiny_cls(), bundle=str(path))
    assert d.blocks == tuple(b.selected_blocks) and d.stats["warmed_up"]
    assert all(torch.equal(d.teacher.state_dict()[k], b.teacher_state[k]) for k in b.teacher_state)
    d.step(images(4))
    r = build_method("rmt", tiny_cls(), bundle=b2)
    assert r.stats["contrastive"]

    with pytest.raises(FileNotFoundError, match="not found"):
        load_bundle(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(BundleError, match="cannot read"):
        load_bundle(tmp_path / "junk.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(BundleError, match="not a DPLOT bundle"):
        load_bundle(tmp_path / "other.pt")
    torch.save({"x": Bundle(["a"])}, tmp_path / "pickled.pt")  # arbitrary objects are refused
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "pickled.pt")
    with pytest.raises(BundleError, match="not in the model"):
        build_method("dplot", tiny_seg(), bundle=Bundle(["block3"]))
    with pytest.raises(BundleError, match="keys"):
        build_method("dplot", tiny_seg(), bundle=Bundle(["block1"], student_state=b.student_state))
