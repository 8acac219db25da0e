"""Video: the flow chain, temporal output fusion, label flicker, DPLOT's temporal pseudo-labels and
their routes through the streaming adapter, the pipeline and the benchmark (docs/video.md)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine_fixtures import tiny_seg
from tta_perception.engine import build_method
from tta_perception.engine.streaming import StreamingAdapter
from tta_perception.engine.temporal import (FUSION_MODES, FlowChain, Motion, TemporalFusion, estimate_motion, to_gray,
                                            uncertainty, warp, warp_nearest)
from tta_perception.metrics import Flicker, flicker_counts
from tta_perception.world.classes import IGNORE_INDEX

torch.set_num_threads(1)
H, W, SHIFT = 64, 128, 3


def texture(seed: int = 0, h: int = H, w: int = W, pad: int = 8) -> np.ndarray:
    """A smooth random texture (uint8), ``pad`` pixels larger on every side."""
    import cv2

    rng = np.random.default_rng(seed)
    a = cv2.GaussianBlur(rng.uniform(0, 255, (h + 2 * pad, w + 2 * pad)).astype(np.float32), (0, 0), 2.0)
    return cv2.normalize(a, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def pair(shift: int = SHIFT, pad: int = 8):
    """Two frames: the camera pans so the content moves ``shift`` pixels to the right."""
    t = texture(pad=pad)
    prev = t[pad:pad + H, pad:pad + W]
    cur = t[pad:pad + H, pad - shift:pad - shift + W]  # cur(x) = prev(x - shift)
    return prev, cur


# ------------------------------------------------------------------------------------ flow
def test_flow_recovers_a_translation_and_marks_the_uncovered_border_invalid():
    prev, cur = pair()
    m = estimate_motion(prev, cur)
    inner = m.valid[:, SHIFT + 4:-4]
    assert inner.mean() > 0.95
    dx = np.median(m.flow[..., 0][m.valid])
    dy = np.median(m.flow[..., 1][m.valid])
    assert abs(dx + SHIFT) < 0.5 and abs(dy) < 0.3   # backward flow: cur pixel x came from x - 3
    assert not m.valid[:, :SHIFT - 1].any()            # uncovered on the left: no match in prev
    # the warp of the previous frame along the flow reproduces the current one where valid
    warped, valid = warp(torch.from_numpy(prev.astype(np.float32))[None], m)
    err = np.abs(warped[0].numpy() - cur.astype(np.float32))[valid.numpy()]
    assert np.median(err) < 4.0


def test_chain_breaks_at_start_reset_size_and_gap():
    prev, cur = pair()
    c = FlowChain()
    assert c.update(prev, 0.0) is None                   # start
    assert isinstance(c.update(cur, 0.1), Motion)
    assert isinstance(c.update(prev, 0.2), Motion)
    assert c.update(cur, 0.4) is None                    # a dropped frame: twice the usual step
    assert isinstance(c.update(prev, 0.5), Motion)       # ... the chain goes on from there
    c.reset()
    assert c.update(cur, 0.6) is None                    # reset
    assert c.update(np.zeros((32, 32), np.uint8), 0.7) is None   # another size
    assert c.update(np.zeros((32, 32), np.uint8), 0.65) is None  # stamps going back
    assert c.update(np.zeros((32, 32), np.uint8), 2.0) is None   # longer than max_gap_s
    assert c.stats()["breaks"] == {"start": 1, "gap": 2, "reset": 1, "size": 1, "order": 1}
    assert c.stats()["links"] == 3
    # without stamps only reset/size break it; the model input (a tensor) is accepted as well
    c = FlowChain()
    x = torch.from_numpy(np.stack([prev] * 3) / 255.0).float()
    assert c.update(x) is None and c.update(x) is not None
    assert to_gray(x).shape == (H, W)


def test_warp_nearest_follows_the_flow():
    flow = np.zeros((4, 6, 2), np.float32)
    flow[..., 0] = -1.0                                   # every pixel came from one to the left
    valid = np.ones((4, 6), bool)
    valid[:, 0] = False
    lab = np.arange(24).reshape(4, 6)
    out, v = warp_nearest(lab, Motion(flow, valid))
    assert (out[:, 1:] == lab[:, :-1]).all() and not v[:, 0].any()


# ------------------------------------------------------------------------------------ fusion
def test_fusion_weight_zero_is_bit_identical_and_fusion_mixes_only_where_valid():
    prev, cur = pair()
    m = estimate_motion(prev, cur)
    z0, z1 = torch.randn(2, 1, 5, H, W).unbind(0)
    off = TemporalFusion(0.0)
    assert off(z0, None) is z0 and off(z1, m) is z1      # untouched: no softmax, no copy
    f = TemporalFusion(0.5)
    out0 = f(z0, None)                                    # no past: the frame's own probabilities
    assert torch.allclose(out0.softmax(1), z0.softmax(1), atol=1e-6)
    assert torch.equal(out0.argmax(1), z0.argmax(1))
    out1 = f(z1, m)
    p1, past = z1.softmax(1), warp(z0.softmax(1), m)[0]
    want = torch.where(torch.from_numpy(m.valid)[None, None], 0.5 * p1 + 0.5 * past, p1)
    assert torch.allclose(out1.softmax(1), want, atol=1e-5)
    inv = ~torch.from_numpy(m.valid)
    assert torch.allclose(out1.softmax(1)[0][:, inv], p1[0][:, inv], atol=1e-6)
    assert f.stats()["fused_frames"] == 1
    with pytest.raises(ValueError):
        TemporalFusion(1.0)


def test_adaptive_fusion_leaves_confident_pixels_alone_and_caps_the_past_at_w():
    prev, cur = pair()
    m = estimate_motion(prev, cur)
    assert m.valid.any() and (~m.valid).any()
    c = 5
    z0 = torch.randn(1, c, H, W)
    z1 = torch.randn(1, c, H, W) * 0.5
    z1[:, :, :, : W // 2] = torch.tensor([60.0, 0, 0, 0, 0])[None, :, None, None]  # max prob 1 in float
    p1 = z1.softmax(1)
    u = uncertainty(p1)
    assert torch.equal(u[..., : W // 2], torch.zeros_like(u[..., : W // 2]))
    assert float(u.min()) >= 0 and float(u.max()) <= 1
    assert float(uncertainty(torch.full((1, c, 2, 2), 1.0 / c)).min()) == pytest.approx(1.0)
    f = TemporalFusion(0.6, "adaptive")
    f(z0, None)
    out = f(z1, m).softmax(1)
    past = warp(z0.softmax(1), m)[0]
    a = 0.6 * torch.from_numpy(m.valid)[None, None].float() * u
    assert torch.allclose(out, p1 + a * (past - p1), atol=1e-5)
    # confident: weight 0, unchanged (but for the log's floor of 1e-12)
    assert torch.allclose(out[..., : W // 2], p1[..., : W // 2], rtol=0, atol=1e-11)
    inv = ~torch.from_numpy(m.valid)
    assert torch.allclose(out[0][:, inv], p1[0][:, inv], atol=1e-6)        # invalid flow: no fusion
    # the weight of the past never exceeds the fixed one: the fused map lies between now and the fixed mix
    fixed = TemporalFusion(0.6, "fixed")
    fixed(z0, None)
    out_fixed = fixed(z1, m).softmax(1)
    assert ((out - p1).abs() <= (out_fixed - p1).abs() + 1e-6).all()
    st = f.stats()
    assert st["mode"] == "adaptive" and 0 < st["mean_past_weight"] <= 0.6
    off = TemporalFusion(0.0, "adaptive")
    assert off(z1, m) is z1                                                # weight 0: the logits themselves
    with pytest.raises(ValueError):
        TemporalFusion(0.5, "confident")
    from tta_perception.runtime import params as P
    assert P.FUSION_MODES == FUSION_MODES                                  # the parameter offers the engine's modes


# ------------------------------------------------------------------------------------ flicker
def test_flicker_on_hand_made_label_maps():
    lab = np.array([[0, 0, 1, 1],
                    [0, 0, 1, 1]])
    prev_lab = np.array([[0, 0, 1, 2],                   # ground truth changed at (0, 3): not counted
                         [0, 0, 1, 1]])
    prev_pred = np.array([[0, 1, 1, 2],
                          [0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 0],
                     [0, 0, 2, 1]])
    valid = np.ones((2, 4), bool)
    valid[1, 3] = False                                   # flow invalid: not counted
    lab_ign = lab.copy()
    lab_ign[1, 0] = IGNORE_INDEX                          # unlabelled in both: not counted
    prev_ign = prev_lab.copy()
    prev_ign[1, 0] = IGNORE_INDEX
    ch, n = flicker_counts(pred, prev_pred, lab_ign, prev_ign, valid)
    assert (ch, n) == (2, 5)                              # (0,1) and (1,2) changed, of 5 counted pixels
    f = Flicker()
    assert f.add(pred, prev_pred, lab_ign, prev_ign, valid, "night") == pytest.approx(40.0)
    f.add(pred, pred, lab, lab, valid, "rain")            # a steady frame
    assert f.domains() == {"night": pytest.approx(40.0), "rain": 0.0}
    assert f.overall() == pytest.approx(100 * 2 / 12)
    with pytest.raises(ValueError):
        flicker_counts(pred, prev_pred[:, :3], lab, prev_lab, valid)


# ------------------------------------------------------------------------------------ DPLOT temporal_pl
def dplot(**kw):
    return build_method("dplot", tiny_seg(), blocks=["block1"], collapse_reset=False, nan_guard=False, **kw)


def frames_and_motion():
    prev, cur = pair()
    x = torch.from_numpy(np.stack([np.stack([prev] * 3), np.stack([cur] * 3)]) / 255.0).float()
    return x, estimate_motion(prev, cur)


def test_dplot_temporal_pl_off_is_the_papers_step():
    x, m = frames_and_motion()
    a, b = dplot(), dplot(temporal_pl=True)
    assert not a.uses_motion and b.uses_motion
    b.set_motion([1, 2], [None, None])                    # no link: nothing to add
    torch.manual_seed(0)
    a.step(x)
    torch.manual_seed(0)
    b.step(x)
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), n
    c = dplot()                                           # off: motion handed to it changes nothing
    c.set_motion([1, 2], [None, m])
    torch.manual_seed(0)
    c.step(x)
    for p, q in zip(a.model.parameters(), c.model.parameters()):
        assert torch.equal(p, q)


def test_dplot_temporal_pl_changes_the_pseudo_label_only_where_the_flow_is_valid():
    x, m = frames_and_motion()
    d = dplot(temporal_pl=True)
    pseudo = torch.randn(2, 4, H // 2, W // 2)            # TinySeg predicts at half resolution
    d.set_motion([7, 8], [None, m])
    out = d.with_previous_frame(pseudo, views=2)
    assert torch.equal(out[0], pseudo[0])                 # frame 7 has no link
    small = m.resized((H // 2, W // 2))
    valid = torch.from_numpy(small.valid)
    assert torch.equal(out[1][:, ~valid], pseudo[1][:, ~valid])
    warped, _ = warp(pseudo[0], m)
    assert torch.allclose(out[1][:, valid], ((2 * pseudo[1] + warped) / 3)[:, valid], atol=1e-6)
    assert d.stats["temporal_frames"] == 1
    # the next step's first frame follows the last one: the kept pair pseudo-label of frame 8 joins it
    d.set_motion([9, 10], [m, None])
    nxt = torch.randn(2, 4, H // 2, W // 2)
    out2 = d.with_previous_frame(nxt, views=2)
    w8, _ = warp(pseudo[1], m)                            # the pair average, never the fused one
    assert torch.allclose(out2[0][:, valid], ((2 * nxt[0] + w8) / 3)[:, valid], atol=1e-6)
    d.reset()                                             # a reset forgets the kept teacher outputs
    d.set_motion([11], [m])
    assert torch.equal(d.with_previous_frame(nxt[:1], views=2), nxt[:1])


def test_dplot_recursive_temporal_pl_carries_the_temporal_pseudo_label_on():
    _, m = frames_and_motion()
    pseudo = torch.randn(3, 4, H // 2, W // 2)
    prev, rec = dplot(temporal_pl=True), dplot(temporal_pl=True, temporal_pl_mode="recursive")
    for d in (prev, rec):
        d.set_motion([1, 2, 3], [None, m, m])
    a, b = prev.with_previous_frame(pseudo, views=2), rec.with_previous_frame(pseudo, views=2)
    assert torch.equal(a[:2], b[:2])                      # frames 1 and 2: the same
    valid = torch.from_numpy(m.resized((H // 2, W // 2)).valid)
    want = (2 * pseudo[2] + warp(b[1], m)[0]) / 3         # frame 3 sees frame 2's temporal pseudo-label
    assert torch.allclose(b[2][:, valid], want[:, valid], atol=1e-6)
    assert not torch.allclose(a[2][:, valid], b[2][:, valid])
    with pytest.raises(ValueError):
        dplot(temporal_pl=True, temporal_pl_mode="ema")


def test_streaming_adapter_hands_serials_and_motions_to_the_step():
    x, m = frames_and_motion()
    d = dplot(temporal_pl=True)
    seen = []
    orig = d.set_motion
    d.set_motion = lambda s, ms: (seen.append((list(s), [mm is not None for mm in ms])), orig(s, ms))[1]
    with StreamingAdapter(d, window=2, adapt_every=2, background=False) as ad:
        ad.predict(x[0], motion=None)
        ad.predict(x[1], motion=m)
        ad.predict(x[0], motion=m)
        ad.reset()                                        # the window and its chain restart
        ad.predict(x[1], motion=m)
        ad.predict(x[0], motion=m)
    assert seen == [([1, 2], [False, True]), ([5, 6], [True, True])]  # a reset skips a serial
    assert d.stats["temporal_frames"] >= 2
    plain = dplot()
    with StreamingAdapter(plain, window=2, adapt_every=2, background=False) as ad:
        ad.predict(x[0], motion=m)                        # a method without uses_motion never gets it
        ad.predict(x[1], motion=m)
    assert plain._motion_ctx is None


# ------------------------------------------------------------------------------------ pipeline
def _pipeline(**cfg):
    from tta_perception.runtime import params as P
    from tta_perception.runtime.pipeline import Pipeline

    c = P.defaults()
    c.update(method="source", device="cpu", publish_overlay=False, **cfg)
    return Pipeline(c, background=False)


def _rgb_pair():
    prev, cur = pair()
    rgb = lambda g: np.stack([g, np.roll(g, 7, 0), np.roll(g, 13, 1)], -1)  # noqa: E731
    return rgb(prev), rgb(cur)


def test_pipeline_temporal_fusion_off_is_identical_and_on_fuses():
    a, b = _rgb_pair()
    plain, zero, fused = _pipeline(), _pipeline(temporal_fusion=0.0), _pipeline(temporal_fusion=0.5)
    try:
        outs = {}
        for name, pipe in (("plain", plain), ("zero", zero), ("fused", fused)):
            outs[name] = [pipe.infer(a, overlay=False, stamp=0.0), pipe.infer(b, overlay=False, stamp=0.1)]
        for r0, r1 in zip(outs["plain"], outs["zero"]):
            assert np.array_equal(r0.class_ids, r1.class_ids) and np.array_equal(r0.confidence_u8, r1.confidence_u8)
        assert zero.frame_path.cameras == {}               # off: no flow computed at all
        assert np.array_equal(outs["fused"][0].class_ids, outs["plain"][0].class_ids)  # no past yet
        assert not np.array_equal(outs["fused"][1].confidence_u8, outs["plain"][1].confidence_u8)
        assert fused.frame_path.cameras[""].chain.stats()["links"] == 1
        fused.set_temporal_fusion(0.0)                     # live: back to the plain output at once
        r = fused.infer(b, overlay=False, stamp=0.2)
        assert np.array_equal(r.class_ids, plain.infer(b, overlay=False, stamp=0.2).class_ids)
    finally:
        for p in (plain, zero, fused):
            p.close()


def test_temporal_fusion_parameter_and_rendered_yaml():
    from tta_perception.runtime import params as P

    spec = P.SPEC["temporal_fusion"]
    assert spec.default == 0.0 and spec.when == "live" and spec.type == "float"
    cfg = P.defaults()
    cfg["temporal_fusion"] = 1.0
    assert P.check_all(cfg)                                # out of range
    assert "temporal_fusion: 0.0" in P.render_yaml()
    spec = P.SPEC["temporal_fusion_mode"]
    assert spec.when == "live" and spec.choices == FUSION_MODES
    cfg = P.defaults()
    cfg["temporal_fusion_mode"] = "sometimes"
    assert P.check_all(cfg)


# ------------------------------------------------------------------------------------ benchmark
def test_stream_bench_scores_flicker_and_fused_rows(tmp_path):
    from tta_perception.cli.main import main

    out = tmp_path / "out"
    rc = main(["bench", "--task", "seg", "--stream", "--random-init", "--sequence", "day2night", "--start", "800",
               "--frames", "806", "--size", "32x64", "--methods", "source,norm", "--temporal-fusion", "0.5",
               "--window", "2", "--adapt-every", "2", "--out", str(out), "--cache", str(tmp_path / "cache"),
               "--no-progress", "--device", "cpu", "--workers", "1", "--no-plot", "--no-ceiling"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    runs = {r["method"]: r for r in res["runs"]}
    assert set(runs) == {"source", "norm", "source+tf", "norm+tf"}
    for r in runs.values():
        assert r["temporal"]["links"] == 5 and r["flicker_overall"] >= 0
    assert runs["source+tf"]["temporal"]["fused_frames"] == 5
    assert runs["source+tf"]["ms_per_frame"] > runs["source"]["ms_per_frame"]
    assert "norm+tf − norm" in (out / "results.txt").read_text()
    assert (out / "temporal_paired.csv").is_file() and (out / "flicker_day2night.csv").is_file()
    # both fusion modes scored from the same run: exactly paired with the base row and with each other
    rc = main(["bench", "--task", "seg", "--stream", "--random-init", "--sequence", "day2night", "--start", "800",
               "--frames", "806", "--size", "32x64", "--methods", "source", "--temporal-fusion", "0.5",
               "--temporal-fusion-mode", "both", "--window", "2", "--adapt-every", "2", "--out", str(tmp_path / "ab"),
               "--cache", str(tmp_path / "cache"), "--no-progress", "--device", "cpu", "--workers", "1", "--no-plot",
               "--no-ceiling"])
    assert rc == 0
    both = {r["method"]: r for r in json.loads((tmp_path / "ab" / "results.json").read_text())["runs"]}
    assert set(both) == {"source", "source+tf", "source+tfa"}
    assert both["source"]["overall"] == runs["source"]["overall"]            # the base row is unchanged
    assert both["source+tf"]["overall"] == runs["source+tf"]["overall"]      # so is the fixed fusion
    assert both["source+tfa"]["temporal"]["mode"] == "adaptive" and both["source+tfa"]["temporal"]["fused_frames"] == 5
    text = (tmp_path / "ab" / "results.txt").read_text()
    assert "source+tfa − source " in text and "source+tfa − source+tf" in text
    assert main(["bench", "--task", "seg", "--stream", "--random-init", "--sequence", "day2night", "--frames", "4",
                 "--methods", "source", "--temporal-fusion-mode", "adaptive", "--no-ceiling"]) == 2  # fusion off
    # stride 10 has no video: every link breaks, flicker is not defined
    rc = main(["bench", "--task", "seg", "--stream", "--random-init", "--sequence", "day2night", "--start", "800",
               "--frames", "840", "--stride", "10", "--size", "32x64", "--methods", "source", "--out",
               str(tmp_path / "s10"), "--cache", str(tmp_path / "cache"), "--no-progress", "--device", "cpu",
               "--workers", "1", "--no-plot", "--no-ceiling"])
    assert rc == 0
    r = json.loads((tmp_path / "s10" / "results.json").read_text())["runs"][0]
    assert r["temporal"]["links"] == 0 and r["temporal"]["breaks"]["gap"] == 3


def test_session_applies_temporal_fusion_live():
    from tta_perception.runtime import params as P
    from tta_perception.runtime.session import Session

    class Log:
        def info(self, msg, **kw):
            pass

        warning = error = debug = info

    cfg = P.defaults()
    cfg.update(method="source", device="cpu")
    s = Session(cfg, Log())
    try:
        assert s.configure() is None
        assert s.pipeline.temporal_fusion == 0.0
        assert s.update({"temporal_fusion": 0.5}) == {"live"}
        assert s.pipeline.temporal_fusion == 0.5 and s.cfg["temporal_fusion"] == 0.5
        mode = s.pipeline.temporal_fusion_mode
        other = "fixed" if mode == "adaptive" else "adaptive"
        assert s.update({"temporal_fusion_mode": other}) == {"live"}
        assert s.pipeline.temporal_fusion_mode == other and s.pipeline.temporal_fusion == 0.5
        a, b = _rgb_pair()
        s.pipeline.infer(a, overlay=False, stamp=0.0)
        s.pipeline.infer(b, overlay=False, stamp=0.1)
        assert s.pipeline.frame_path.cameras[""].fusion.mode == other   # the next frames use it
    finally:
        s.pipeline.close()


def test_replay_takes_the_fusion_mode_only_with_the_fusion():
    import argparse

    from tta_perception.cli.replay import add_arguments, settings

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg, _ = settings(p.parse_args(["in", "--out", "out", "--temporal-fusion", "0.6", "--temporal-fusion-mode",
                                    "adaptive"]))
    assert cfg["temporal_fusion"] == 0.6 and cfg["temporal_fusion_mode"] == "adaptive"
    with pytest.raises(ValueError, match="--temporal-fusion W"):
        settings(p.parse_args(["in", "--out", "out", "--temporal-fusion-mode", "adaptive"]))
