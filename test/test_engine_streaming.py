"""Streaming adapter: inference never waits for adaptation, bounded window, BN for one frame."""
from __future__ import annotations

import threading

import pytest
import torch

from engine_fixtures import images, tiny_cls, tiny_seg
from tta_perception.engine import StreamingAdapter, build_method
from tta_perception.engine.methods.tent import Tent

torch.set_num_threads(1)
GUARD = 30.0  # seconds; only so a broken implementation fails instead of hanging


class BlockingTent(Tent):
    """Tent whose adaptation step blocks until the test releases it."""

    def setup(self, **kw):
        super().setup(**kw)
        self.started = threading.Event()
        self.release = threading.Event()

    def _adapt(self, x):
        self.started.set()
        assert self.release.wait(GUARD)
        return super()._adapt(x)


def frame(i, h=16):
    return images(1, h, h, seed=i)[0]


def call_in_thread(fn, *args):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("out", fn(*args)), daemon=True)
    t.start()
    t.join(GUARD)
    return (not t.is_alive()), box.get("out")


def test_predict_does_not_wait_for_a_running_adaptation_step():
    m = BlockingTent(tiny_cls(), collapse_reset=False)
    with StreamingAdapter(m, window=4, adapt_every=1, background=True) as s:
        s.predict(frame(0))
        s.predict(frame(1))                    # window reaches min_window: a step is requested
        assert m.started.wait(GUARD)           # ... and is now running, blocked
        for i in range(2, 8):                  # predictions keep coming while it is blocked
            done, out = call_in_thread(s.predict, frame(i))
            assert done and out.shape == (5,)
        st = s.stats()
        assert st["busy"] and st["adapt_steps"] == 0 and st["frames"] == 8
        assert st["window_len"] == 4           # bounded window
        assert st["coalesced"] >= 4            # requests merged, not queued
        m.release.set()
        assert s.wait_idle(GUARD)
        st = s.stats()
        assert 1 <= st["adapt_steps"] <= 2 and st["publishes"] == st["adapt_steps"]
        assert st["errors"] == 0


def test_window_is_bounded_and_sync_mode_counts_steps():
    m = build_method("tent", tiny_cls(), collapse_reset=False)
    s = StreamingAdapter(m, window=3, adapt_every=2, background=False, min_window=2)
    for i in range(11):
        y = s.predict(frame(i))
        assert y.shape == (5,)
        assert len(s._frames) <= 3
    st = s.stats()
    assert st["frames"] == 11 and st["window_len"] == 3 and st["adapt_steps"] == 5
    assert m.stats["steps"] == 5
    s.close()


def test_sync_mode_is_deterministic_and_batched_frames_work():
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = build_method("dplot", tiny_seg(), blocks=["block1"], collapse_reset=False)
        s = StreamingAdapter(m, window=4, background=False)
        outs.append(torch.stack([s.predict(frame(i).unsqueeze(0)) for i in range(6)]))
        s.close()
    assert outs[0].shape == (6, 1, 4, 16, 16)
    assert torch.equal(outs[0], outs[1])


def test_single_frame_bn_uses_published_test_statistics():
    m = build_method("norm", tiny_cls(), bn_momentum=0.5)
    src_mean = m.model.block1.bn1.running_mean.clone()
    s = StreamingAdapter(m, window=4, background=False)
    first = s.predict(frame(0))
    with torch.no_grad():
        ref = tiny_cls().eval()(frame(0).unsqueeze(0))[0]
    assert torch.allclose(first, ref, atol=1e-5)  # nothing adapted yet: the source prediction
    for i in range(1, 6):
        s.predict(frame(i) * 0.3)  # a darker "domain"
    active = s._copies[s._active]["model"]
    assert not active.block1.bn1.training  # eval: running (EMA-of-test) statistics
    assert torch.equal(active.block1.bn1.running_mean, m.model.block1.bn1.running_mean)
    assert not torch.allclose(active.block1.bn1.running_mean, src_mean)
    # a single frame is normalised with the window statistics, not its own
    a = s.predict(frame(7) * 0.3)
    with torch.no_grad():
        b = active(frame(7).unsqueeze(0) * 0.3)[0]
    assert torch.allclose(a, b, atol=1e-6)


def test_reset_enable_state_and_errors():
    m = build_method("tent", tiny_cls(), collapse_reset=False)
    s = StreamingAdapter(m, window=4, background=True)
    f = frame(0)
    y0 = s.predict(f)
    for i in range(1, 6):
        s.predict(frame(i))
    assert s.wait_idle(GUARD)
    assert s.stats()["adapt_steps"] >= 1
    state = s.state_dict()
    s.reset()
    assert m.stats["resets"] == 1 and s.stats()["window_len"] == 0
    assert torch.allclose(s.predict(f), y0, atol=1e-6)  # source weights & source BN stats again
    s.set_enabled(False)
    n = s.stats()["adapt_steps"]
    for i in range(5):
        s.predict(frame(i))
    assert s.wait_idle(GUARD) and s.stats()["adapt_steps"] == n and not s.enabled
    s.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(m.model.state_dict().values(),
                                                  state["method_state"]["modules"]["model"].values()))
    s.set_enabled(True)
    m.step = lambda x: (_ for _ in ()).throw(RuntimeError("boom"))  # adaptation failure
    for i in range(3):
        assert s.predict(frame(i)).shape == (5,)
    assert s.wait_idle(GUARD)
    assert s.stats()["errors"] >= 1 and "boom" in s.stats()["last_error"]
    s.close()
    s.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        s.predict(f)


def test_bad_frames_and_arguments():
    m = build_method("source", tiny_cls())
    s = StreamingAdapter(m, background=False)
    with pytest.raises(ValueError, match="frame"):
        s.predict(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError):
        StreamingAdapter(m, window=0)


def test_predict_modes_use_the_named_model():
    torch.manual_seed(0)
    m = build_method("dplot", tiny_cls(), collapse_reset=False, blocks=["block1"])
    x = frame(0)
    with torch.no_grad():
        m.teacher.fc.bias.add_(1.0)  # make the teacher differ from the student
        want = {"student": m.model.eval()(x[None])[0], "teacher": m.teacher.eval()(x[None])[0]}
    for mode, expected in want.items():
        s = StreamingAdapter(m, background=False, predict_mode=mode)
        assert s.stats()["predict_mode"] == mode
        torch.testing.assert_close(s.predict(x), expected)
    both = StreamingAdapter(m, background=False, predict_mode="method").predict(x)
    assert not torch.allclose(both, want["student"])  # the paper's 4-pass ensemble differs
    with pytest.raises(ValueError, match="predict_mode"):
        StreamingAdapter(m, predict_mode="ensemble")
    with pytest.raises(ValueError, match="has no teacher"):
        StreamingAdapter(build_method("tent", tiny_cls()), predict_mode="teacher")


def test_worker_priority_and_threads_stay_on_the_worker():
    import os

    m = build_method("tent", tiny_cls())
    with pytest.raises(ValueError, match="adapt_nice"):
        StreamingAdapter(m, adapt_nice=20)
    with pytest.raises(ValueError, match="adapt_threads"):
        StreamingAdapter(m, adapt_threads=-1)
    main_threads = torch.get_num_threads()
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    s = StreamingAdapter(m, window=2, adapt_every=1, adapt_nice=min(19, main_nice + 5), adapt_threads=2)
    try:
        for i in range(3):
            s.predict(frame(i))
        assert s.wait_idle(GUARD)
        st = s.stats()
        assert st["adapt_steps"] >= 1 and st["worker_warning"] == ""
        assert st["worker_nice"] == min(19, main_nice + 5) and st["worker_threads"] == 2
        # neither leaks to the calling thread nor to threads that start torch later
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice
        assert torch.get_num_threads() == main_threads
        ok, later = call_in_thread(torch.get_num_threads)
        assert ok and later == main_threads
    finally:
        s.close()


def test_bn_stats_frame_normalises_each_frame_with_its_own_statistics():
    from tta_perception.engine.model_utils import set_bn_mode

    seg = build_method("tent", tiny_seg())
    assert StreamingAdapter(seg, background=False).bn_stats == "frame"  # auto: adapting segmentation
    assert StreamingAdapter(build_method("tent", tiny_cls()), background=False).bn_stats == "running"
    assert StreamingAdapter(build_method("source", tiny_seg()), background=False).bn_stats == "running"
    with pytest.raises(ValueError, match="bn_stats"):
        StreamingAdapter(seg, bn_stats="batch")
    x = frame(1) * 0.3 + 0.6  # far from the source statistics
    ref = tiny_seg()
    with torch.no_grad():
        set_bn_mode(ref, "batch")
        own = ref(x[None])[0]
        set_bn_mode(ref, "source")
        running = ref(x[None])[0]
    for mode, want in (("frame", own), ("running", running)):
        s = StreamingAdapter(build_method("tent", tiny_seg()), background=False, bn_stats=mode)
        s.set_enabled(False)
        torch.testing.assert_close(s.predict(x), want)
        torch.testing.assert_close(s.predict(x), want)  # and the buffers were not touched
    assert not torch.allclose(own, running)
