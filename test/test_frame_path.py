"""The one frame path (``runtime/frame_path.py``): when it follows the motion, which method gets it,
how a reset breaks the chains, the live fusion weight, its stage times; and that the node's pipeline
and the benchmark's stream runner both run their frames through it."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from tta_perception.runtime.frame_path import FramePath

torch.set_num_threads(1)


class Adapter:
    """A stand-in for ``StreamingAdapter``: fixed logits, and what each call handed to the method."""

    def __init__(self, uses_motion: bool = False):
        self.method = SimpleNamespace(uses_motion=uses_motion, device=torch.device("cpu"))
        self.handed: list = []

    def predict_batch(self, x, adapt=None, motions=None):
        self.handed.append(motions)
        return torch.linspace(-1, 1, x.shape[0] * 4 * x.shape[2] * x.shape[3]).reshape(x.shape[0], 4, *x.shape[2:])


def frames(n: int = 4, shift: int = 2) -> list[torch.Tensor]:
    """``n`` frames (1, 3, 32, 64) of a camera panning ``shift`` pixels a frame over a smooth texture."""
    import cv2

    rng = np.random.default_rng(0)
    t = cv2.GaussianBlur(rng.uniform(0, 1, (32, 64 + n * shift)).astype(np.float32), (0, 0), 2.0)
    t = (t - t.min()) / (t.max() - t.min())
    return [torch.from_numpy(np.repeat(t[None, None, :, k * shift:k * shift + 64], 3, 1)) for k in range(n)]


def test_the_motion_is_followed_only_where_something_needs_it():
    x = frames(2)
    for kwargs, follows in (({}, False), ({"fusion": 0.5}, True), ({"flow": True}, True),
                            ({"flow": False, "fusion": 0.5}, False)):
        path = FramePath(Adapter(), **kwargs)
        recs = [path.run(f, stamps=[0.1 * k])[0] for k, f in enumerate(x)]
        assert (recs[1].motion is not None) == follows and path.follows_motion() == follows, kwargs
    path = FramePath(Adapter(uses_motion=True))                       # DPLOT temporal_pl: its own need
    path.run(x[0], stamps=[0.0]), path.run(x[1], stamps=[0.1])
    assert path.adapter.handed[0] == [None] and path.adapter.handed[1][0] is not None


def test_the_method_gets_the_motion_only_while_one_camera_is_seen():
    x = frames(3)
    path = FramePath(Adapter(uses_motion=True))
    path.run(x[0], ["front"], [0.0])
    path.run(x[1], ["front"], [0.1])
    path.run(torch.cat([x[2], x[2]]), ["front", "rear"], [0.2, 0.2])  # cameras interleave in the window
    assert path.adapter.handed[1][0] is not None and path.adapter.handed[2] is None
    assert set(path.cameras) == {"front", "rear"}


def test_reset_breaks_every_chain_and_keeps_the_counts():
    x = frames(4)
    path = FramePath(Adapter(), fusion=0.5)
    recs = [path.run(f, stamps=[0.1 * k])[0] for k, f in enumerate(x[:2])]
    path.reset()
    recs += [path.run(f, stamps=[0.1 * k])[0] for k, f in enumerate(x[2:], 2)]
    assert [r.motion is not None for r in recs] == [False, True, False, True]
    assert path.camera().chain.stats()["breaks"] == {"start": 1, "reset": 1}
    assert path.camera().fusion.stats()["fused_frames"] == 2
    assert all(path.seconds[s] > 0 for s in ("flow", "predict", "fuse"))


def test_fusion_weight_is_live_and_zero_publishes_the_logits():
    x = frames(3)
    path = FramePath(Adapter(), fusion=0.6)
    path.run(x[0], stamps=[0.0])
    fused = path.run(x[1], stamps=[0.1])[0]
    assert not torch.equal(fused.output, fused.logits)
    path.set_fusion(0.0)
    plain = path.run(x[2], stamps=[0.2])[0]
    assert torch.equal(plain.output, plain.logits) and plain.motion is None   # off: no flow either
    assert path.camera().fusion is None


def test_the_published_mode_is_live_and_other_modes_are_only_scored():
    import pytest

    x = frames(3)
    path = FramePath(Adapter(), fusion=0.6, fusion_mode="fixed", score_modes=("fixed", "adaptive"))
    recs = [path.run(f, stamps=[0.1 * k])[0] for k, f in enumerate(x[:2])]
    assert set(recs[1].fused) == {"fixed", "adaptive"} and recs[1].output is recs[1].fused["fixed"]
    assert not torch.equal(recs[1].fused["fixed"], recs[1].fused["adaptive"])
    path.set_fusion(0.6, "adaptive")                                  # live: the next frame starts over
    r = path.run(x[2], stamps=[0.2])[0]
    assert r.output is r.fused["adaptive"] and path.camera().fusion.mode == "adaptive"
    assert path.camera().fusion.stats()["frames"] == 1
    alone = FramePath(Adapter(), fusion=0.6)
    alone.run(x[0], stamps=[0.0])
    assert set(alone.run(x[1], stamps=[0.1])[0].fused) == {"fixed"}   # the node fuses only what it publishes
    with pytest.raises(ValueError):
        path.set_fusion(0.6, "median")


def test_pipeline_and_stream_runner_share_the_path(tmp_path, monkeypatch):
    """Every frame of the node's pipeline and of ``bench --stream`` goes through ``FramePath.run``."""
    from tta_perception.bench.runner import RunOptions, run_method
    from tta_perception.bench.streams import world_seg_stream
    from tta_perception.runtime import frame_path, params as P
    from tta_perception.runtime.model_loader import load_model
    from tta_perception.runtime.pipeline import Pipeline

    calls: list[str] = []
    real = frame_path.FramePath.run
    monkeypatch.setattr(frame_path.FramePath, "run",
                        lambda self, x, *a, **k: (calls.append(len(x)), real(self, x, *a, **k))[1])
    cfg = P.defaults()
    cfg.update(method="source", device="cpu", temporal_fusion=0.5)
    pipe = Pipeline(cfg, background=False)
    try:
        pipe.infer_batch([np.zeros((64, 128, 3), np.uint8)] * 2, cameras=["front", "rear"], overlay=False)
    finally:
        pipe.close()
    assert calls == [2] and set(pipe.frame_path.cameras) == {"front", "rear"}
    lm = load_model(architecture="driveseg", random_init=True)
    st = world_seg_stream("day2night", setting="continual", batch_size=1, start=800, stop=803, stride=1,
                          size=(32, 64), workers=1, progress=False, cache_dir=tmp_path)
    r = run_method("norm", lm.model, st, RunOptions(device=torch.device("cpu"), streaming=True, window=2,
                                                    adapt_every=2, progress=False, temporal_fusion=0.5))
    assert calls == [2, 1, 1, 1] and r.temporal["links"] == 2
    assert [c.method for c in r.companions] == ["norm+tf"] and r.companions[0].temporal["fused_frames"] == 2
    assert r.companions[0].ms_per_frame >= r.ms_per_frame > 0
    assert r.flicker_overall >= 0                                  # counted (NaN would fail)
