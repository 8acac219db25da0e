"""Long drives in ``bench --stream`` (docs/benchmark.md "Long drives"): checkpoints inside a cell and
an interrupted cell resumed to the same numbers, a whole bench run resumed from its saved cells,
the refusals, ``--detach``, and the long-drive report's numbers on runs built by hand."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace

import pytest
import torch

from tta_perception.bench import streams
from tta_perception.bench.checkpoints import CellInterrupted, checkpoint_path
from tta_perception.bench.long_drive import long_drive_report, long_drive_rows
from tta_perception.bench.runner import MethodRun, RunOptions, run_method
from tta_perception.cli.main import main

torch.set_num_threads(1)
SIZE = (32, 64)
# 3 weather cycles of dynamic (1200 frames each at 10 fps), every 40th frame: 90 frames
TINY = ["bench", "--task", "seg", "--stream", "--sequence", "dynamic", "--cycles", "3", "--stride", "40",
        "--size", "32x64", "--threads", "1", "--no-ceiling", "--no-plot", "--workers", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("long_drive_cache")


@pytest.fixture(scope="module")
def model_and_bundle():
    from tta_perception.engine.bundle import load_bundle
    from tta_perception.paths import WEIGHTS_DIR
    from tta_perception.runtime.model_loader import load_model

    return load_model(architecture="driveseg").model, load_bundle(WEIGHTS_DIR / "driveseg_dplot.bundle")


def _opts(**kw) -> RunOptions:
    return RunOptions(device=torch.device("cpu"), streaming=True, window=4, adapt_every=4, progress=False, **kw)


def _frames_run(monkeypatch) -> list[int]:
    """Counts the frames that go through the frame path (to tell a skipped chunk from a re-run one)."""
    from tta_perception.runtime.frame_path import FramePath

    seen: list[int] = []
    real = FramePath.run

    def counting(self, x, *a, **kw):
        seen.append(int(x.shape[0]))
        return real(self, x, *a, **kw)

    monkeypatch.setattr(FramePath, "run", counting)
    return seen


# ------------------------------------------------------------------------------------ one cell
@pytest.mark.parametrize("method", ["tent", "dplot"])
def test_an_interrupted_cell_resumes_to_exactly_the_same_scores(method, model_and_bundle, cache, tmp_path,
                                                                monkeypatch):
    model, bundle = model_and_bundle
    st = streams.world_seg_stream("dynamic", batch_size=1, stop=2400, stride=40, size=SIZE, cache_dir=cache,
                                  workers=1, progress=False)  # 2 cycles, 60 frames
    assert st.n_samples == 60 and st.cycle_frames == 1200
    full = run_method(method, model, st, _opts(), bundle=bundle)
    ck = dict(checkpoint_dir=tmp_path, checkpoint_every=20, resume=True)
    with pytest.raises(CellInterrupted):
        run_method(method, model, st, _opts(**ck, stop_after_frames=30), bundle=bundle)
    file = checkpoint_path(tmp_path, "dynamic", method, 0)
    saved = torch.load(file, weights_only=True)  # plain tensors and containers only
    assert saved["frames"] == 20 and saved["chunks"] == 20 and saved["fingerprint"]["method"] == method
    seen = _frames_run(monkeypatch)
    resumed = run_method(method, model, st, _opts(**ck), bundle=bundle)
    assert sum(seen) == 40                                    # the 20 frames before the checkpoint were not re-run
    assert resumed.domains == full.domains and resumed.overall == full.overall
    assert resumed.domains_by_cycle == full.domains_by_cycle and len(full.domains_by_cycle) == 12
    assert resumed.miou_by_cycle == full.miou_by_cycle and sorted(full.miou_by_cycle) == [1, 2]
    assert resumed.series_y == full.series_y and resumed.series_x == full.series_x
    assert resumed.streaming["adapt_steps"] == full.streaming["adapt_steps"] == 15
    assert resumed.stats["steps"] == full.stats["steps"] == 15


def test_a_guarded_cell_resumes_with_its_guard_and_quality_scores(model_and_bundle, cache, tmp_path, monkeypatch):
    """The guard's checks, snapshots and counters and the per-frame quality estimates are part of the
    checkpoint: a resumed '+g' cell equals the uninterrupted one."""
    from tta_perception.runtime.guard import GuardSettings

    model, bundle = model_and_bundle
    st = streams.world_seg_stream("dynamic", batch_size=1, stop=2400, stride=40, size=SIZE, cache_dir=cache,
                                  workers=1, progress=False)
    g = dict(quality_model="driveseg", guard_settings=GuardSettings(check_every=2, window=2, source_reliable=0.0,
                                                                  min_agreement=0.0, min_class_ratio=0.0, min_kept=0.0))
    full = run_method("tent+g", model, st, _opts(**g), bundle=bundle)
    ck = dict(checkpoint_dir=tmp_path, checkpoint_every=20, resume=True, **g)
    with pytest.raises(CellInterrupted):
        run_method("tent+g", model, st, _opts(**ck, stop_after_frames=30), bundle=bundle)
    saved = torch.load(checkpoint_path(tmp_path, "dynamic", "tent+g", 0), weights_only=True)
    assert saved["path"]["guard"]["n_checks"] == 10 and saved["path"]["guard"]["healthy"] is not None
    resumed = run_method("tent+g", model, st, _opts(**ck), bundle=bundle)
    assert len(full.series_quality) == len(full.series_level) == len(full.series_accuracy) == 60
    assert resumed.series_quality == full.series_quality and resumed.series_level == full.series_level
    assert resumed.series_accuracy == full.series_accuracy and resumed.series_y == full.series_y
    counts = {k: v for k, v in full.streaming["guard"].items() if k.startswith("guard_") and k != "guard_ms"}
    assert counts["guard_checks"] == 30
    assert {k: resumed.streaming["guard"][k] for k in counts} == counts


def test_a_resumed_cell_misses_one_flow_link(model_and_bundle, cache, tmp_path):
    """The flow chain is not saved: the first frame after a resume has no motion (one break more),
    the mIoU is the same."""
    model, _ = model_and_bundle
    st = streams.world_seg_stream("dynamic", batch_size=1, stop=120, stride=5, size=SIZE, cache_dir=cache, workers=1,
                                  progress=False)  # 24 frames 0.5 s apart: every frame linked to the previous one
    full = run_method("source", model, st, _opts())
    ck = dict(checkpoint_dir=tmp_path, checkpoint_every=8, resume=True)
    with pytest.raises(CellInterrupted):
        run_method("source", model, st, _opts(**ck, stop_after_frames=10))
    resumed = run_method("source", model, st, _opts(**ck))
    assert full.temporal["links"] == 23 and resumed.temporal["links"] == 22
    assert resumed.temporal["breaks"] == {"start": 2} and resumed.temporal["frames"] == 24
    assert resumed.domains == full.domains and resumed.overall == full.overall and resumed.series_y == full.series_y


def test_a_checkpoint_of_other_settings_or_a_corrupt_one_is_refused(model_and_bundle, cache, tmp_path):
    model, _ = model_and_bundle
    st = streams.world_seg_stream("dynamic", batch_size=1, stop=120, stride=5, size=SIZE, cache_dir=cache, workers=1,
                                  progress=False)
    ck = dict(checkpoint_dir=tmp_path, checkpoint_every=8, resume=True)
    with pytest.raises(CellInterrupted):
        run_method("source", model, st, _opts(**ck, stop_after_frames=8))
    with pytest.raises(ValueError) as err:
        run_method("source", model, st, replace(_opts(**ck), window=2))
    msg = str(err.value)
    assert "was made with window 4, this run has 2" in msg and "--overwrite" in msg and "\n" not in msg
    file = checkpoint_path(tmp_path, "dynamic", "source", 0)
    file.write_bytes(file.read_bytes()[:200])                 # a save cut short
    with pytest.raises(ValueError) as err:
        run_method("source", model, st, _opts(**ck))
    msg = str(err.value)
    assert str(file) in msg and "cannot be read" in msg and "--overwrite (or delete it)" in msg and "\n" not in msg


def test_a_method_run_survives_json_exactly():
    comp = MethodRun("tent+tf", "dynamic", 1, {"clear": 41.25}, 40.1, 3, 2.5, 0.1, 12.0, "cpu", series_x=[0, 1, 2],
                     series_y=[1 / 3, 2 / 3, float("nan")], flicker_overall=float("nan"))
    run = MethodRun("tent", "dynamic", 1, {"clear": 40.0 + 1e-12}, 39.9, 3, 2.0, 0.1, 11.0, "cpu",
                    series_x=[0, 1, 2], series_y=[0.1, 0.2, 0.30000000000000004], series_domain=["clear"] * 3,
                    series_weather=[{"fog": 0.5}] * 3, stats={"steps": 1, "blocks": ["layer3"]},
                    streaming={"adapt_steps": 1}, domains_by_cycle={"clear@1": 40.0}, miou_by_cycle={1: 40.0, 2: 41.5},
                    temporal={"breaks": {"start": 1}}, companions=[comp])
    back = MethodRun.from_dict(json.loads(json.dumps(run.to_dict())))
    assert json.dumps(back.to_dict()) == json.dumps(run.to_dict())
    assert back.miou_by_cycle == {1: 40.0, 2: 41.5} and back.companions[0].method == "tent+tf"
    assert back.domains["clear"] == 40.0 + 1e-12 and math.isnan(back.companions[0].series_y[-1])


# ------------------------------------------------------------------------------------ a bench run
def test_an_interrupted_bench_run_resumes_to_the_same_tables(cache, tmp_path, monkeypatch, capsys):
    import tta_perception.bench.cells as cells_module

    base = TINY + ["--methods", "source,tent", "--seeds", "0,1", "--checkpoint-every", "20", "--no-progress",
                   "--cache", str(cache)]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(base + ["--out", str(whole)]) == 0
    real = cells_module.run_method
    calls: list[tuple[str, int]] = []
    crash = [True]

    def interrupting(name, model, stream, opts, **kw):
        calls.append((name, opts.seed))
        if (name, opts.seed) == ("tent", 1) and crash:  # the first try of the last cell: after a checkpoint
            crash.clear()
            opts = replace(opts, stop_after_frames=50)
        return real(name, model, stream, opts, **kw)

    monkeypatch.setattr(cells_module, "run_method", interrupting)
    with pytest.raises(CellInterrupted):
        main(base + ["--out", str(parts)])
    assert sorted(p.name for p in (parts / "cells").iterdir()) == [
        "dynamic__source__s0.json", "dynamic__source__s1.json", "dynamic__tent__s0.json"]
    assert [p.name for p in (parts / "checkpoints").iterdir()] == ["dynamic__tent__s1.pt"]
    assert json.loads((parts / "config.json").read_text())["status"] == "running"
    capsys.readouterr()
    # refused, in one line each: a plain run into it, a resume with other numbers, a resume without --out
    assert main(base + ["--out", str(parts)]) == 2
    assert "holds an unfinished bench run (3 finished cells, 1 cell checkpoints): pass --resume" in capsys.readouterr().err
    assert main(base + ["--out", str(parts), "--resume", "--window", "2"]) == 2
    err = capsys.readouterr().err
    assert "used --window 4, this command --window 2" in err and err.count("\n") == 1
    assert main(base + ["--resume"]) == 2
    assert "--resume: needs --out DIR" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "holds no earlier bench run" in capsys.readouterr().err

    calls.clear()
    assert main(base + ["--out", str(parts), "--resume", "--no-plot"]) == 0
    assert calls == [("tent", 1)]                               # only the unfinished cell ran again
    assert "tent seed 1 on dynamic: resumed at 40/90 frames" in capsys.readouterr().out
    assert list((parts / "checkpoints").iterdir()) == []         # dropped once the cell was saved
    assert json.loads((parts / "config.json").read_text())["status"] == "finished"
    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, parts))
    for m in ("source", "tent"):
        ra, rb = a["streams"]["dynamic"]["rows"][m], b["streams"]["dynamic"]["rows"][m]
        assert ra["cells"] == rb["cells"] and ra["overall"] == rb["overall"] and ra["seeds"] == rb["seeds"] == [0, 1]
    for key in ("cells", "gains"):
        assert a["cycles"]["dynamic"]["tent"][key] == b["cycles"]["dynamic"]["tent"][key]
    assert a["long_drive"]["dynamic"]["methods"] == b["long_drive"]["dynamic"]["methods"]
    assert [(r["method"], r["seed"], r["series"], r["miou_by_cycle"]) for r in a["runs"]] == \
        [(r["method"], r["seed"], r["series"], r["miou_by_cycle"]) for r in b["runs"]]
    assert sorted(a["long_drive"]["dynamic"]["methods"]) == ["tent"]
    # a finished run is started over without --overwrite
    assert main(base + ["--out", str(parts), "--methods", "source"]) == 0


def test_detach_runs_the_command_in_the_background(cache, tmp_path, capsys):
    assert main(TINY + ["--methods", "source", "--detach"]) == 2   # the log and the pid need a folder
    assert "--detach: needs --out DIR" in capsys.readouterr().err
    out = tmp_path / "bg"
    assert main(TINY + ["--methods", "source", "--cache", str(cache), "--out", str(out), "--detach"]) == 0
    printed = capsys.readouterr().out
    pid = int((out / "bench.pid").read_text())
    assert os.getsid(pid) == pid != os.getsid(0)               # a session of its own
    assert f"pid {pid}" in printed and f"tail -f {out / 'bench.log'}" in printed and "--resume --detach" in printed
    deadline = time.monotonic() + 120
    while True:                                                 # our child: reap it when it ends
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        assert time.monotonic() < deadline, "the detached bench did not finish in 120 s"
        time.sleep(0.2)
    log = (out / "bench.log").read_text()
    assert os.waitstatus_to_exitcode(status) == 0, log[-2000:]
    assert log.strip().splitlines()[-1].startswith(f"wrote {out}/results.json")
    assert "source seed 0 on dynamic: cycle 1/3, 30/90 frames" in log and "\r" not in log   # lines, not bars
    assert (out / "results.json").is_file() and not (out / "bench.pid").exists()


# ------------------------------------------------------------------------------------ the report
def _stream(cycles: int = 4):
    return streams.BenchStream("dynamic", "seg", 19, "continual", 1, ["clear"], {"clear": "clear"}, 40 * cycles,
                               lambda: iter(()), {"fps": 10.0, "stride": 120}, "frame", 1200)


def _run(method: str, seed: int, by_cycle: list[float], steps: int = 0) -> MethodRun:
    xs = list(range(0, 1200 * len(by_cycle), 120))             # 10 frames per cycle, at offsets 0..1080
    return MethodRun(method, "dynamic", seed, {}, 0.0, len(xs), 1.0, 0.0, 0.0, "cpu", series_x=xs,
                     miou_by_cycle={c + 1: v for c, v in enumerate(by_cycle)},
                     domains_by_cycle={f"clear@{c + 1}": v + 1 for c, v in enumerate(by_cycle)},
                     streaming={"adapt_steps": steps} if method != "source" else {"adapt_steps": 0})


def test_the_long_drive_numbers_by_hand(tmp_path):
    from scipy.stats import t as student_t

    src = [40.0, 40.0, 40.0, 40.0]
    gaps = {0: [3.0, 1.0, -1.0, -3.0], 1: [2.0, 1.5, -2.5, -3.0]}
    runs = [_run("source", s, src) for s in (0, 1)]
    runs += [_run("tent", s, [40.0 + g for g in gaps[s]], steps=1200) for s in (0, 1)]
    rows = long_drive_rows(_stream(), runs, ["source", "tent"])
    # each cycle's middle frame: (c - 1) * 1200 + 540, at 10 fps; one cycle = 1/30 h
    assert rows["hours"] == {c: ((c - 1) * 1200 + 540) / 10 / 3600 for c in (1, 2, 3, 4)}
    r = rows["methods"]["tent"]
    assert [r["cycles"][c]["gap"].mean for c in (1, 2, 3, 4)] == pytest.approx([2.5, 1.25, -1.75, -3.0])
    # OLS per seed, per cycle: seed 0 -2.0, seed 1: Sxy = -9.5, Sxx = 5 -> -1.9; per hour x30: -60, -57
    sl = r["slope_per_hour"]
    assert sl["per_seed"] == pytest.approx([-60.0, -57.0])
    half = student_t.ppf(0.975, 1) * math.sqrt(4.5) / math.sqrt(2)  # sd of (-60, -57) = sqrt(4.5)
    assert sl["slope"] == pytest.approx(-58.5) and sl["half_width"] == pytest.approx(half)
    assert "over 2 seeds" in sl["how"]
    # the mean gap is first below 0 in cycle 3 (-1.75, interval over 2 seeds wide), significantly in 4 (-3, -3)
    assert r["first_below_source"] == 3 and r["first_significantly_below_source"] == 4
    assert r["mean_gap"] == pytest.approx((2.5 + 1.25 - 1.75 - 3.0) / 4)
    assert r["adapt_steps_per_hour"] == pytest.approx(1200 / (4800 / 10 / 3600))   # 9,000 steps per hour
    assert r["cycles"][2]["phases"]["clear"]["gap"].mean == pytest.approx(1.25)

    one = long_drive_rows(_stream(), [runs[1], runs[3]], ["source", "tent"])["methods"]["tent"]
    sl = one["slope_per_hour"]
    # seed 1 alone: residuals -0.35, 1.05, -1.05, 0.35 -> SSR 2.45; SE = sqrt(2.45 / 2 / 5) per cycle, x30 per hour
    assert sl["slope"] == pytest.approx(-57.0)
    assert sl["half_width"] == pytest.approx(student_t.ppf(0.975, 2) * 30 * math.sqrt(0.245))
    assert "n=1 seed" in sl["how"] and one["first_significantly_below_source"] is None

    text, payload = long_drive_report([_stream()], runs, ["source", "tent"], tmp_path)
    assert "slope / h" in text[0] and "-58.5 [" in text[0] and "3 / 4" in text[0]
    assert payload["dynamic"]["methods"]["tent"]["first_below_source"] == 3
    csv_lines = (tmp_path / "long_drive_dynamic.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 4 * 2                          # per cycle: the whole cycle and its one phase
    assert (tmp_path / "long_drive_dynamic.png").read_bytes()[:4] == b"\x89PNG"
    # shorter runs and runs without a source row: no report, no file
    assert long_drive_rows(_stream(2), [_run("source", 0, src[:2]), _run("tent", 0, src[:2])], ["tent"]) is None
    assert long_drive_rows(_stream(), runs[2:], ["tent"]) is None
