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


# ------------------------------------------------------------------ GPU path, checked on a CPU
class FakeCuda:
    """The four names of torch.cuda the hand-over uses, recording what each stream waits for."""

    def __init__(self):
        self.log = []
        self.current = FakeStream(self, "inference")

    def Stream(self, device=None):  # noqa: N802 - torch.cuda's names
        return FakeStream(self, "adapt")

    def Event(self):  # noqa: N802
        return FakeEvent(self)

    def current_stream(self):
        return self.current

    def stream(self, s):
        api = self

        class _Ctx:
            def __enter__(self):
                self.prev, api.current = api.current, s

            def __exit__(self, *exc):
                api.current = self.prev

        return _Ctx()


class FakeStream:
    def __init__(self, api, name):
        self.api, self.name, self.n = api, name, 0

    def wait_event(self, event):
        self.api.log.append(("wait", self.name, event.label))

    def synchronize(self):
        self.api.log.append(("sync", self.name))


class FakeEvent:
    def __init__(self, api):
        self.api, self.label = api, None

    def record(self, stream):
        stream.n += 1
        self.label = f"{stream.name}#{stream.n}"
        self.api.log.append(("record", stream.name, self.label))


def test_handover_orders_the_two_streams_with_events_only():
    from tta_perception.engine.handover import Handover

    api = FakeCuda()
    h = Handover("cuda", api=api)

    class Frame:
        is_cuda = True
        marked = []

        def record_stream(self, s):
            self.marked.append(s.name)

    h.frames_written()                    # inference: frame appended -> inference#1
    h.before_predict(0)                   # nothing published yet: no wait
    h.predicted_with(0)                   # inference#2
    with h.step([Frame()]):               # adapt waits for the frames; runs on the adapt stream
        assert api.current_stream().name == "adapt"
        h.before_overwrite(0)             # waits for the prediction that read copy 0
        h.published(0)                    # adapt#1
    assert api.current_stream().name == "inference"
    h.before_predict(0)                   # the next prediction on copy 0 waits for the copy
    assert api.log == [("record", "inference", "inference#1"), ("record", "inference", "inference#2"),
                       ("wait", "adapt", "inference#1"), ("wait", "adapt", "inference#2"),
                       ("record", "adapt", "adapt#1"), ("wait", "inference", "adapt#1")]
    assert Frame.marked == ["adapt"]
    assert not any(kind == "sync" for kind, *_ in api.log)  # no device synchronisation
    h.finish_step()
    assert api.log[-1] == ("sync", "adapt")  # only the adaptation stream, on its own thread


def test_background_adapter_publishes_through_the_handover():
    api = FakeCuda()
    m = build_method("tent", tiny_seg())
    ad = StreamingAdapter(m, window=2, adapt_every=2, background=True, handover_api=api)
    try:
        for i in range(4):
            ad.predict(frame(i))
        assert ad.wait_idle(GUARD) and ad.stats()["adapt_steps"] >= 1
        waits = [e for e in api.log if e[0] == "wait"]
        assert ("wait", "adapt", "inference#1") in waits or any(w[1] == "adapt" for w in waits)
        assert any(e[:2] == ("record", "adapt") for e in api.log)  # weights published on the adapt stream
        ad.predict(frame(9))
        assert any(w[1] == "inference" for w in waits + [e for e in api.log if e[0] == "wait"])
    finally:
        ad.close()


class OOMTent(Tent):
    """Tent whose step runs out of CUDA memory above ``limit`` frames (None: always)."""

    limit = None

    def _adapt(self, x):
        if self.limit is None or x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return super()._adapt(x)


def test_out_of_memory_during_a_step_halves_the_window_and_is_counted():
    m = OOMTent(tiny_seg(), collapse_reset=False)
    m.limit = 2
    ad = StreamingAdapter(m, window=8, adapt_every=8, background=False, min_window=2)
    for i in range(8):
        ad.predict(frame(i))
    st = ad.stats()
    assert st["adapt_steps"] == 1 and st["errors"] == 0
    assert st["oom_window_reductions"] == 2 and ad._oom_window == 2  # 8 -> 4 -> 2 frames
    ad.close()


def test_out_of_memory_at_one_frame_on_the_cpu_is_an_error_not_a_crash():
    m = OOMTent(tiny_seg(), collapse_reset=False)
    ad = StreamingAdapter(m, window=2, adapt_every=2, background=False, min_window=2)
    for i in range(2):
        out = ad.predict(frame(i))
    st = ad.stats()
    assert st["errors"] == 1 and "out of memory" in st["last_error"] and st["oom_window_reductions"] == 1
    assert torch.isfinite(out).all()
    ad.close()


def test_methods_move_with_their_whole_state():
    m = build_method("tent", tiny_seg())
    m.step(images(2, 16, 16))
    m.to("cpu")  # the CPU fallback's move, here CPU -> CPU: every tensor still usable
    assert torch.isfinite(m.step(images(2, 16, 16))).all()


def test_bf16_and_channels_last_run_and_stay_close_to_fp32():
    torch.manual_seed(0)
    ref = StreamingAdapter(build_method("source", tiny_seg()), window=2, background=False)
    fast = StreamingAdapter(build_method("source", tiny_seg()), window=2, background=False,
                            precision="bf16", channels_last=True)
    x = frame(3)
    a, b = ref.predict(x), fast.predict(x)
    assert b.dtype == torch.float32 and torch.allclose(a, b, atol=0.1, rtol=0.05)
    with pytest.raises(ValueError, match="precision"):
        StreamingAdapter(build_method("source", tiny_seg()), precision="fp8")
