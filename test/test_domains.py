"""Domain memory's parts on constructed statistics: the shift detector (switch, hysteresis, new
domain, return to a known one), the bank (round trip through state_dict, eviction), calibration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tta_perception.engine.domains import DomainBank, ShiftDetector, calibrate, frame_features


def _det(**kw):
    return ShiftDetector(np.zeros(4), np.ones(4), threshold=1.0, patience=3, **kw)


A, B = np.zeros(4), np.full(4, 5.0)  # two domains 5 thresholds apart


def test_frames_of_one_domain_stay_in_it_and_a_single_odd_frame_does_not_switch():
    d = _det()
    first = d.observe(A)  # the stream starts in the source domain the calibration describes
    assert first.domain == 0 and not first.new and not first.switched and first.distance == 0
    assert [d.observe(A + 0.1).domain for _ in range(5)] == [0] * 5
    odd = d.observe(B)  # one frame unlike the domain: not a switch
    assert odd.domain == 0 and not odd.switched
    assert d.observe(A).domain == 0 and d.frames_in_domain == 8


def test_a_new_domain_after_patience_frames_then_back_to_the_known_one():
    d = _det()
    d.observe(A)
    seen = [d.observe(B) for _ in range(3)]
    assert [s.switched for s in seen] == [False, False, True]
    assert seen[-1].new and seen[-1].domain == 1 and seen[-1].previous == 0 and seen[-1].nearest == 0
    back = [d.observe(A) for _ in range(3)]
    assert back[-1].switched and not back[-1].new and back[-1].domain == 0  # recognised, not new
    assert d.frames_in_domain == 1 and back[-1].distance < 1.0


def test_interrupted_candidates_restart_the_count():
    d = _det()
    d.observe(A)
    d.observe(B), d.observe(B), d.observe(A)  # two odd frames, then the domain again
    assert not d.observe(B).switched and not d.observe(B).switched
    assert d.observe(B).switched


def test_detector_state_round_trips():
    d = _det()
    for f in (A, B, B, B, A):
        d.observe(f)
    e = _det()
    e.load_state_dict(d.state_dict())
    assert e.current == d.current and e.distances(A) == pytest.approx(d.distances(A))


def test_calibration_threshold_is_the_quantile_of_source_distances():
    rng = np.random.default_rng(0)
    feats = rng.normal(3.0, 2.0, size=(2000, 8))
    cal = calibrate(feats)
    assert np.allclose(cal["mean"], 3.0, atol=0.2) and np.allclose(cal["std"], 2.0, atol=0.2)
    d = ShiftDetector(np.array(cal["mean"]), np.array(cal["std"]), cal["threshold"])
    inside = np.mean([np.sqrt(np.mean(d._z(f) ** 2)) <= cal["threshold"] for f in feats])
    assert 0.985 <= inside <= 0.995  # 99 % of source frames are within it


def test_frame_features_are_mean_and_log_variance_per_channel():
    x = torch.stack([torch.full((4, 4), 2.0), torch.arange(16.0).reshape(4, 4)])[None]
    f = frame_features(x)
    assert f.shape == (4,) and f[0] == 2.0 and f[1] == pytest.approx(7.5)
    assert f[2] == pytest.approx(np.log(1e-6)) and f[3] == pytest.approx(np.log(torch.arange(16.0).var().item()))


def test_bank_round_trip_and_least_recently_used_eviction():
    bank = DomainBank(max_domains=2)
    s = {k: {"w": torch.full((10,), float(k))} for k in range(3)}
    bank.put(0, s[0])
    bank.put(1, s[1])
    assert bank.get(0) is s[0]  # 0 is now the most recently used
    assert bank.put(2, s[2]) == [1] and list(bank.states) == [0, 2]
    other = DomainBank()
    other.load_state_dict(bank.state_dict())
    assert list(other.states) == [0, 2] and torch.equal(other.get(2)["w"], s[2]["w"])


def test_bank_evicts_under_a_memory_budget_but_never_the_current_domain():
    big = lambda v: {"w": torch.full((1 << 18,), float(v))}  # 1 MiB each  # noqa: E731
    bank = DomainBank(max_domains=10, max_mb=2.5)
    for k in range(4):
        bank.put(k, big(k), keep=0)
    assert 0 in bank and len(bank) == 2 and bank.mb() <= 2.5


# ------------------------------------------------------------------ in the streaming adapter
from engine_fixtures import tiny_seg  # noqa: E402
from tta_perception.engine import StreamingAdapter, build_method  # noqa: E402
from tta_perception.engine.domains import build_memory, source_features  # noqa: E402


def _frames(level, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(level + 0.1 * torch.rand(3, 16, 16, generator=g)).clamp(0, 1) for _ in range(n)]


def _memory(model, **kw):
    src = torch.stack(_frames(0.3, 64, 99))  # "clear source" frames of domain A
    from tta_perception.engine.domains import calibrate

    return build_memory(calibrate(source_features(model, src)), patience=2, **kw)


def _params(method):
    return {k: v.detach().clone() for k, v in method.model.state_dict().items()}


def test_a_known_domain_resumes_its_adapted_state():
    model = tiny_seg()
    method = build_method("tent", model, collapse_reset=False)
    mem = _memory(model)
    ad = StreamingAdapter(method, window=2, adapt_every=2, background=False, domains=mem)
    for f in _frames(0.3, 8, 1):        # domain A: learns
        ad.predict(f)
    assert ad.stats()["domain"] == 0
    learned_a = _params(method)
    for f in _frames(0.9, 8, 2):        # domain B (bright): a new domain
        ad.predict(f)
    st = ad.stats()
    assert st["domain"] == 1 and st["domains_known"] == 2 and st["domain_switches"] == 1
    for f in _frames(0.3, 2, 3):        # back to A: after patience frames, switch pending
        ad.predict(f)
    assert ad.stats()["domain"] == 0 and mem.pending is None  # applied at the step of frame 2
    # the step ran from A's stored state: the state before that step was exactly what A had learned
    assert 1 in mem.bank and 0 in mem.bank
    stored_a = mem.bank.get(0)["modules"]["model"]
    assert all(torch.equal(stored_a[k], learned_a[k]) for k in stored_a if not k.endswith("num_batches_tracked"))
    ad.close()


def test_domain_memory_survives_a_restart_through_state_dict():
    model = tiny_seg()
    mem = _memory(model)
    ad = StreamingAdapter(build_method("tent", model, collapse_reset=False), window=2, adapt_every=2,
                          background=False, domains=mem)
    for f in _frames(0.3, 6, 1) + _frames(0.9, 6, 2):
        ad.predict(f)
    state = ad.state_dict()
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # a restart reads it back weights-only
    model2 = tiny_seg()
    ad2 = StreamingAdapter(build_method("tent", model2, collapse_reset=False), window=2, adapt_every=2,
                           background=False, domains=_memory(model2))
    ad2.load_state_dict(state)
    assert ad2.domains.detector.current == 1 and sorted(ad2.domains.bank.states) == sorted(mem.bank.states)
    for f in _frames(0.3, 2, 3):
        ad2.predict(f)
    assert ad2.stats()["domain"] == 0  # recognised after the restart
    ad.close(), ad2.close()


def test_a_save_between_a_switch_and_its_step_keeps_the_domain_that_ended():
    """The detector switches on a frame, the bank swap waits for the next step: a state saved in
    between carries the pending switch, so the restarted adapter still banks the ended domain."""
    import io

    model = tiny_seg()
    mem = _memory(model)
    ad = StreamingAdapter(build_method("tent", model, collapse_reset=False), window=2, adapt_every=4,
                          background=False, domains=mem)
    for f in _frames(0.3, 8, 1):        # domain A, two steps
        ad.predict(f)
    learned_a = _params(ad.method)
    for f in _frames(0.9, 2, 2):        # B opens on its second frame (patience 2); next step at frame 12
        ad.predict(f)
    assert ad.stats()["domain"] == 1 and mem.pending is not None and 0 not in mem.bank
    buf = io.BytesIO()
    torch.save(ad.state_dict(), buf)    # ~/save at this moment, then kill -9
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    model2 = tiny_seg()
    ad2 = StreamingAdapter(build_method("tent", model2, collapse_reset=False), window=2, adapt_every=4,
                           background=False, domains=_memory(model2))
    ad2.load_state_dict(state)
    assert ad2.domains.pending == mem.pending
    for f in _frames(0.9, 4, 3):        # the restarted adapter's first step (4 frames) applies the switch
        ad2.predict(f)
    assert ad2.domains.pending is None and 0 in ad2.domains.bank
    stored_a = ad2.domains.bank.get(0)["modules"]["model"]
    assert all(torch.equal(stored_a[k], learned_a[k]) for k in stored_a if not k.endswith("num_batches_tracked"))
    ad.close(), ad2.close()


def test_a_switch_never_blocks_inference():
    import threading

    from test_engine_streaming import GUARD, BlockingTent

    model = tiny_seg()
    m = BlockingTent(model, collapse_reset=False)
    m.release.set()
    ad = StreamingAdapter(m, window=2, adapt_every=2, background=True, domains=_memory(model))
    try:
        for f in _frames(0.3, 4, 1):
            ad.predict(f)
        assert ad.wait_idle(GUARD)
        m.release.clear()
        m.started.clear()
        for f in _frames(0.9, 2, 2):     # a step starts and blocks
            ad.predict(f)
        assert m.started.wait(GUARD)
        done = threading.Event()

        def more():
            for f in _frames(0.9, 4, 3):  # predictions (and the detector) go on meanwhile
                ad.predict(f)
            done.set()

        t = threading.Thread(target=more, daemon=True)
        t.start()
        assert done.wait(GUARD), "inference waited for the adaptation step"
        assert ad.stats()["domain"] == 1
    finally:
        m.release.set()
        ad.close()


def test_detector_purity_on_known_assignments():
    from tta_perception.metrics import detector_purity

    phases = ["clear"] * 4 + ["rain"] * 4 + ["night"] * 2 + ["night_rain"] * 2
    ids = [0, 0, 0, 1] + [1, 1, 1, 1] + [2, 2] + [2, 2]  # night and night rain share an id
    p = detector_purity(phases, ids)
    assert p["purity"] == pytest.approx(9 / 12)    # ids as their majority phase: 3 + 4 + 2
    assert p["inverse"] == pytest.approx(11 / 12)  # clear is split 3/1
    assert p["one_to_one"] == pytest.approx(9 / 12) and p["mapping"][1] == "rain"


def test_stream_scorer_reports_by_detected_domain():
    from tta_perception.metrics import StreamScorer

    s = StreamScorer(["dplot"], num_classes=2)
    lab = np.zeros((4, 4), np.uint8)
    s.add_detected("dplot", 0, 0)
    s.add_detected("dplot", 300, 1)
    for k, phase in enumerate(["clear", "clear", "clear", "rain", "rain"]):
        s.add_weather(k * 100, {"domain": phase, "weather": {}})
        s.add_truth(k * 100, lab)
        s.add_prediction("dplot", k * 100, lab)
    s.process(final=True)
    assert set(s.detected_table()["dplot"]) == {"domain 0", "domain 1"}
    assert s.purity()["dplot"]["one_to_one"] == 1.0
