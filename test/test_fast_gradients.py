"""The hand-written gradients of issue 14 (bilinear 2x upsampling, entropy and symmetric
cross-entropy, DPLOT's losses on the unflipped views, the sampled collapse monitor): the same
values as the plain expressions, bit for bit, and the same gradients up to float rounding."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from engine_fixtures import images, tiny_seg
from tta_perception.engine import build_method
from tta_perception.engine.losses import (entropy_and_symmetric_cross_entropy, predicted_classes, softmax_entropy,
                                          symmetric_cross_entropy)
from tta_perception.models import build_model
from tta_perception.models.base import seg_logits
from tta_perception.models.resize import upsample_bilinear

torch.set_num_threads(1)
FORMATS = [torch.contiguous_format, torch.channels_last]


def _plain_entropy(z):
    return -(z.softmax(1) * z.log_softmax(1)).sum(1)


def _plain_sce(z, t, alpha=0.5):
    return -(1 - alpha) * (t.softmax(1) * z.log_softmax(1)).sum(1) - alpha * (z.softmax(1) * t.log_softmax(1)).sum(1)


def _grads(fn, x, weight):
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    return out, torch.autograd.grad((out * weight).sum(), x)[0]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (2, 3, 1, 5), (1, 2, 4, 3), (3, 12, 8, 16)])
def test_upsampling_keeps_the_forward_and_its_gradient_is_the_adjoint(shape, fmt):
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)
    size = (2 * shape[2], 2 * shape[3])
    plain = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
    w = torch.randn(shape[0], shape[1], *size, dtype=torch.float64)
    ours, g_ours = _grads(lambda t: upsample_bilinear(t, size), x, w)
    ref, g_ref = _grads(plain, x, w)
    assert torch.equal(ours, ref)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)
    assert g_ours.is_contiguous(memory_format=fmt)
    if x.numel() <= 64:
        assert torch.autograd.gradcheck(lambda t: upsample_bilinear(t, size), (x.clone().requires_grad_(),))


def test_upsampling_other_sizes_and_no_grad_are_plain_interpolate():
    x = torch.randn(2, 3, 5, 7)
    for size in [(9, 13), (10, 7), (5, 7)]:
        assert torch.equal(upsample_bilinear(x, size), F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        y = upsample_bilinear(x.clone().requires_grad_(), size)
        assert "Upsample2x" not in type(y.grad_fn).__name__
    y = upsample_bilinear(x.clone().requires_grad_(), (10, 14))
    assert "Upsample2x" in type(y.grad_fn).__name__


def test_seg_logits_are_standard_layout_with_the_same_values():
    model = build_model("driveseg").eval().to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(x)
        ref = F.interpolate(model.classify(model.forward_features(x)), size=(32, 64), mode="bilinear",
                            align_corners=False)
    assert out.is_contiguous() and torch.equal(out, ref)
    assert torch.equal(seg_logits(ref, x), ref)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_losses_have_the_plain_values_and_their_gradients(fmt, alpha):
    z = (3 * torch.randn(2, 6, 3, 4, dtype=torch.float64)).contiguous(memory_format=fmt)
    t = 3 * torch.randn(2, 6, 3, 4, dtype=torch.float64)
    w = torch.randn(2, 3, 4, dtype=torch.float64)
    for ours_fn, plain_fn in [(softmax_entropy, _plain_entropy),
                              (lambda a: symmetric_cross_entropy(a, t, alpha=alpha), lambda a: _plain_sce(a, t, alpha))]:
        ours, g_ours = _grads(ours_fn, z, w)
        ref, g_ref = _grads(plain_fn, z, w)
        assert torch.equal(ours, ref)
        torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)
        assert torch.autograd.gradcheck(ours_fn, (z.clone().requires_grad_(),))
    q, log_q = t.softmax(1), t.log_softmax(1)
    x = z.clone().requires_grad_()
    ent, sce = entropy_and_symmetric_cross_entropy(x, q, log_q, alpha)
    assert torch.equal(ent, _plain_entropy(z)) and torch.equal(sce, _plain_sce(z, t, alpha))
    g_ent = torch.autograd.grad(ent.mean(), x, retain_graph=True)[0]   # each loss alone, as DPLOT asks
    g_sce = torch.autograd.grad(sce.mean(), x)[0]
    torch.testing.assert_close(g_ent, _grads(_plain_entropy, z, torch.full_like(w, 1 / w.numel()))[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(g_sce, _grads(lambda a: _plain_sce(a, t, alpha), z,
                                             torch.full_like(w, 1 / w.numel()))[1], rtol=0, atol=1e-12)


def test_losses_without_gradients_and_for_classification():
    z, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(softmax_entropy(z.requires_grad_()), _plain_entropy(z))
    w = torch.randn(6)
    for ours_fn, plain_fn in [(softmax_entropy, _plain_entropy),
                              (lambda a: symmetric_cross_entropy(a, t), lambda a: _plain_sce(a, t))]:
        ours, g = _grads(ours_fn, z, w.double())
        ref, g_ref = _grads(plain_fn, z, w.double())
        assert torch.equal(ours, ref)
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_a_target_with_gradient_keeps_plain_autograd():
    z, t = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    symmetric_cross_entropy(z, t).sum().backward()
    assert t.grad is not None and z.grad is not None


def test_dplot_losses_are_the_plain_ones_on_the_flipped_view():
    """DPLOT scores the mirrored view against the mirrored target and flips the loss map back: the
    same loss values as SCE on the flipped-back logits, and the same gradients up to rounding."""
    m = build_method("dplot", tiny_seg(), blocks=["block1"], collapse_reset=False)
    x = images(3, 16, 24)
    ref_model, ref_teacher = copy.deepcopy(m.model), copy.deepcopy(m.teacher)
    r = m.compute_gradients(x)
    v = torch.cat([x, x.flip(-1)])
    with torch.no_grad():
        zt = ref_teacher(v)
    pseudo = (zt[:3] + zt[3:].flip(-1)) / 2
    z = ref_model(v)
    l_ent = _plain_entropy(z).mean()
    l_pc = _plain_sce(z[:3], pseudo).mean() + _plain_sce(z[3:].flip(-1), pseudo).mean()
    assert torch.equal(r["l_ent"], l_ent.detach()) and torch.equal(r["l_pc"], l_pc.detach())
    params = list(ref_model.parameters())
    g_pc = torch.autograd.grad(l_pc, params)
    for ours, ref in zip(r["g_pc"], g_pc):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    pred = z[:3] + z[3:].flip(-1) + zt[:3] + zt[3:].flip(-1)
    assert torch.equal(r["pred"], pred.detach())


@pytest.mark.parametrize("shape", [(4, 12, 128, 256), (3, 5, 7, 9), (300, 10), (5000, 10), (2, 12, 100, 101)])
@pytest.mark.parametrize("max_pixels", [4096, 100])
def test_monitor_samples_the_same_pixels_as_the_full_argmax(shape, max_pixels):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).round()   # ties: the first maximum, as argmax on the whole map
    for fmt in ([torch.contiguous_format, torch.channels_last] if x.dim() == 4 else [torch.contiguous_format]):
        y = x.contiguous(memory_format=fmt)
        full = y.argmax(1).reshape(-1)
        expected = full[::max(1, full.numel() // max_pixels)] if full.numel() > max_pixels else full
        assert torch.equal(predicted_classes(y, max_pixels), expected)


_FAULTS = """
import resource, sys, torch
from tta_perception.runtime.memory import keep_freed_memory
applied = keep_freed_memory()
x = torch.empty(4 << 20)            # 16 MB: above glibc's default mmap threshold
for _ in range(5):                  # the same size freed and taken again, as every adaptation step does
    y = torch.ones(4 << 20); del y
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    y = torch.ones(4 << 20); del y
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults(env_extra: dict) -> tuple[str, float]:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, faults = out.stdout.split()
    return applied, float(faults)


def test_freed_tensor_memory_is_reused_without_new_page_faults():
    """In its own process (the setting is process-wide): with ``keep_freed_memory`` a freed 16 MB
    tensor's pages are reused; a user's MALLOC_ environment setting wins and nothing is changed."""
    applied, faults = _faults({})
    assert applied == "True" and faults < 1000         # 4,096 pages per 16 MB when they are fresh
    applied, faults = _faults({"MALLOC_MMAP_THRESHOLD_": str(1 << 20)})
    assert applied == "False" and faults > 2000
