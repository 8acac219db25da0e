"""The ceiling: the all-weather oracle (``train-source --weather all``), its committed weights, the
gap-closed metric on constructed scores, and the ceiling row + gap-closed table of ``bench``."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from tta_perception.bench.ceiling import MIN_GAP_POINTS, gap_rows
from tta_perception.cli.main import main
from tta_perception.metrics import gap_closed
from tta_perception.models.checkpoint import read_manifest, sha256_of
from tta_perception.paths import WEIGHTS_DIR

torch.set_num_threads(1)
CHEAP = ["gaussian_noise", "brightness", "contrast"]


def test_gap_closed_on_constructed_scores():
    # mIoU: source 20, ceiling 70 -> a gap of 50 points
    assert gap_closed(45.0, 20.0, 70.0) == pytest.approx(0.5)
    assert gap_closed(70.0, 20.0, 70.0) == pytest.approx(1.0)
    assert gap_closed(20.0, 20.0, 70.0) == 0.0
    assert gap_closed(10.0, 20.0, 70.0) == pytest.approx(-0.2)          # worse than source
    assert gap_closed(80.0, 20.0, 70.0) == pytest.approx(1.2)           # beyond the ceiling
    # error: source 60 %, ceiling 20 %; 1 = the ceiling in both directions
    assert gap_closed(40.0, 60.0, 20.0, lower_is_better=True) == pytest.approx(0.5)
    assert gap_closed(20.0, 60.0, 20.0, lower_is_better=True) == pytest.approx(1.0)
    assert gap_closed(66.0, 60.0, 20.0, lower_is_better=True) == pytest.approx(-0.15)
    # no gap, or a ceiling below the source model: nothing to close
    assert math.isnan(gap_closed(50.0, 40.0, 40.0))
    assert math.isnan(gap_closed(50.0, 40.0, 30.0))
    assert math.isnan(gap_closed(50.0, 40.0, 50.0, lower_is_better=True))
    assert math.isnan(gap_closed(41.0, 40.0, 40.5, min_gap=1.0))       # under the tolerance
    assert gap_closed(41.0, 40.0, 42.0, min_gap=1.0) == pytest.approx(0.5)
    assert math.isnan(gap_closed(float("nan"), 40.0, 60.0))


def test_gap_rows_per_domain_and_on_the_summary_values():
    def row(cells, seq):
        return {"cells": cells, "mean": float(np.mean(list(cells.values()))), "seq": seq}

    rows = {"source": row({"clear": 65.0, "night": 10.0}, 30.0),
            "dplot": row({"clear": 70.0, "night": 30.0}, 40.0)}
    ceiling = row({"clear": 65.5, "night": 70.0}, 60.0)
    g = gap_rows(rows, ceiling, ["clear", "night"], "seg", ["seq"])
    assert list(g) == ["dplot"]                                          # source is 0 by definition
    assert math.isnan(g["dplot"]["cells"]["clear"])                     # 0.5-point gap < MIN_GAP_POINTS
    assert MIN_GAP_POINTS > 0.5
    assert g["dplot"]["cells"]["night"] == pytest.approx(20 / 60)
    assert g["dplot"]["mean"] == pytest.approx((50.0 - 37.5) / (67.75 - 37.5))   # ratio of the means
    assert g["dplot"]["seq"] == pytest.approx(10 / 30)
    err = {"source": {"cells": {"fog": 90.0}, "mean": 90.0}, "tent": {"cells": {"fog": 50.0}, "mean": 50.0}}
    assert gap_rows(err, {"cells": {"fog": 10.0}, "mean": 10.0}, ["fog"], "cls")["tent"]["mean"] == pytest.approx(0.5)
    assert gap_rows({"tent": err["tent"]}, {"cells": {"fog": 10.0}, "mean": 10.0}, ["fog"], "cls") == {}


def test_all_weather_sampler_covers_every_condition_and_is_seeded():
    from tta_perception.training import all_weather, clear_weather, weather_targets
    from tta_perception.world.weather import PRESETS

    targets = weather_targets()
    assert all(p in targets for p in PRESETS.values())
    assert any(t.fog_density == 40 and t.fog_distance == 10 for t in targets)   # clear2fog's light fog keyframe
    draws = [all_weather(np.random.default_rng([0, i])) for i in range(200)]
    kinds = {w.describe() for w in draws}
    assert {"clear", "night", "fog", "rain", "night+rain"} <= kinds
    assert draws[:5] == [all_weather(np.random.default_rng([0, i])) for i in range(5)]
    assert clear_weather(np.random.default_rng(1)).describe() == "clear"


def test_oracle_crops_get_every_corruption_in_equal_groups():
    from tta_perception.training import render_cls_set
    from tta_perception.world.corruptions import CORRUPTIONS

    clean, y0 = render_cls_set(32, 5)
    x, y = render_cls_set(32, 5, corruptions=["brightness"], severity=5)
    assert x.shape == clean.shape and (y == y0).all()                  # same crops, labels and groups
    assert not np.array_equal(x[1::2], clean[1::2])                    # group 1: brightness at severity 5
    x2, _ = render_cls_set(32, 5, corruptions=["brightness"], severity=5)
    assert np.array_equal(x, x2)
    assert len(CORRUPTIONS) == 15


def test_train_source_weather_all_runs_and_reports_it():
    from tta_perception.training import TrainConfig, train_source

    cfg = TrainConfig(task="cls", train_size=32, val_size=16, epochs=1, batch_size=16, weather="all", threads=1)
    model, report = train_source(cfg, progress=False, log=lambda *_: None)
    assert report["weather"] == "all" and report["train_size"] == 32 and 0 <= report["val"]["accuracy"] <= 1
    with pytest.raises(ValueError, match="weather"):
        train_source(TrainConfig(task="cls", weather="sunny"), progress=False)


@pytest.mark.parametrize("name,arch", [("driveseg_oracle", "driveseg"), ("signnet_oracle", "signnet"),
                                       ("lite0_seg_oracle", "lite0_seg"), ("lite0_cls_oracle", "lite0_cls")])
def test_committed_oracles_match_the_manifest_and_load_by_name(name, arch):
    from tta_perception.runtime.model_loader import embedded_oracle, load_model

    manifest = read_manifest()
    entry = manifest[name]
    path = WEIGHTS_DIR / entry["file"]
    limit = (16 if arch.startswith("lite0") else 5) * 1024 * 1024     # lite0: 3 M float32 parameters
    assert entry["arch"] == arch and path.stat().st_size <= limit and sha256_of(path) == entry["sha256"]
    assert entry["command"].startswith("tta-perception train-source") and "--weather all" in entry["command"]
    assert entry["train"]["weather"] == "all" and entry["heldout_domains"]
    src = manifest[arch]["train"]                                       # the source model's budget
    assert entry["train"]["train_size"] == src["train_size"] and entry["train"]["epochs"] == src["epochs"]
    lm = load_model(name)
    assert lm.arch == arch and lm.weights_id == entry["sha256"] and embedded_oracle(arch) == name


def test_the_oracle_beats_the_source_model_in_fog():
    """A real shifted domain: 96 held-out crops in heavy fog (seed 7, never trained on)."""
    from tta_perception.models.checkpoint import load_source_model
    from tta_perception.training import evaluate_arrays
    from tta_perception.world.sign_crops import render_sign_crops
    from tta_perception.world.weather import preset

    x, y = render_sign_crops(96, preset("HeavyFogNoon"), seed=7)
    src = evaluate_arrays(load_source_model("signnet"), x, y, "cls")["accuracy"]
    oracle = evaluate_arrays(load_source_model("signnet_oracle"), x, y, "cls")["accuracy"]
    assert oracle > src + 0.3


def test_bench_prints_and_writes_the_ceiling_and_gap_closed(tmp_path, capsys):
    """Untrained source model, the committed clear signnet as the ceiling: a real gap to close."""
    out = tmp_path / "out"
    base = ["bench", "--task", "cls", "--quick", "--random-init", "--methods", "source,norm",
            "--corruptions", ",".join(CHEAP), "--n", "16", "--batch-size", "8", "--cache", str(tmp_path / "cache"),
            "--no-progress", "--device", "cpu", "--no-plot"]
    assert main(base + ["--out", str(out), "--ceiling-weights", str(WEIGHTS_DIR / "signnet_clear.pt")]) == 0
    text = capsys.readouterr().out
    assert "gap closed, % of the source -> ceiling gap" in text
    res = json.loads((out / "results.json").read_text())
    st = res["streams"]["corruptions"]
    assert list(st["rows"]) == ["source", "norm"]                      # the methods' rows stay as they were
    c = st["ceiling"]
    assert "signnet_clear.pt" in c["model"] and res["ceiling"] == c["model"]
    for col in CHEAP:
        want = gap_closed(st["rows"]["norm"]["cells"][col], st["rows"]["source"]["cells"][col], c["row"]["cells"][col],
                          lower_is_better=True, min_gap=MIN_GAP_POINTS)
        got = c["gap_closed"]["norm"]["cells"][col]
        assert (got is None and math.isnan(want)) or got == pytest.approx(want, abs=1e-4)
    assert c["row"]["cells"]["brightness"] < st["rows"]["source"]["cells"]["brightness"] - 20   # a real gap
    with open(out / "table_corruptions.csv") as fh:
        assert [r[0] for r in csv.reader(fh)][1:] == ["source", "norm", "ceiling"]
    with open(out / "gap_closed_corruptions.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["method", *CHEAP, "mean"] and [r[0] for r in rows[1:]] == ["norm"]
    assert main(base + ["--out", str(tmp_path / "none"), "--no-ceiling"]) == 0
    res = json.loads((tmp_path / "none" / "results.json").read_text())
    assert "ceiling" not in res["streams"]["corruptions"] and res["ceiling"] is None
    assert not (tmp_path / "none" / "gap_closed_corruptions.csv").exists()


def test_streaming_bench_runs_the_committed_oracle_by_itself(tmp_path):
    out = tmp_path / "out"
    assert main(["bench", "--task", "seg", "--stream", "--sequence", "clear2fog,clear2rain", "--stride", "300",
                 "--size", "32x64", "--methods", "source,norm", "--window", "2", "--adapt-every", "2", "--out",
                 str(out), "--cache", str(tmp_path / "cache"), "--no-progress", "--device", "cpu", "--workers", "1",
                 "--no-plot"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert "driveseg_oracle" in res["ceiling"]
    for name in ("clear2fog", "clear2rain"):
        c = res["streams"][name]["ceiling"]
        assert c["row"]["streaming"]["adapt_steps"] == 0 and set(c["gap_closed"]) == {"norm"}
        assert set(c["gap_closed"]["norm"]) == {"cells", "mean", "seq"}
    s = res["summary"]["ceiling"]
    assert set(s["row"]["cells"]) == {"clear2fog", "clear2rain"}
    assert s["row"]["cells"]["clear2fog"] == pytest.approx(res["streams"]["clear2fog"]["ceiling"]["row"]["seq"],
                                                           abs=1e-3)
    with open(out / "summary.csv") as fh:
        assert [r[0] for r in csv.reader(fh)][1:] == ["source", "norm", "ceiling"]
