"""Several cameras, one adapted model: ``bench --stream --cameras N`` and ``node-bench --cameras N``'s
pure parts (tiny settings: random-init driveseg, 32x64 frames, a few frames)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tta_perception.bench import cameras as C
from tta_perception.bench import node as nodebench
from tta_perception.bench.runner import RunOptions, run_method
from tta_perception.bench.streams import world_seg_stream
from tta_perception.cli.main import main
from tta_perception.metrics import Interval
from tta_perception.runtime.model_loader import load_model

KW = dict(setting="continual", batch_size=1, stride=300, size=(32, 64), workers=1, progress=False)


def test_shared_with_one_camera_equals_the_single_camera_stream(tmp_path):
    lm = load_model(architecture="driveseg", random_init=True)
    st = world_seg_stream("clear2fog", cache_dir=tmp_path, **KW)
    opts = RunOptions(device=torch.device("cpu"), streaming=True, window=2, adapt_every=2, progress=False)
    single = run_method("tent", lm.model, st, opts)
    shared, = C.run_shared("tent", lm.model, [st], opts)
    assert shared.series_y == pytest.approx(single.series_y, abs=1e-9)
    assert shared.domains == pytest.approx(single.domains) and shared.overall == pytest.approx(single.overall)
    assert shared.streaming["adapt_steps"] == single.streaming["adapt_steps"] == 2


def test_views_are_other_streams_of_the_same_drive(tmp_path):
    front = world_seg_stream("clear2fog", cache_dir=tmp_path, **KW)
    rear = world_seg_stream("clear2fog", cache_dir=tmp_path, view="rear", **KW)
    assert front.name == "clear2fog" and rear.name == "clear2fog@rear"
    a, b = list(front), list(rear)
    assert [c.index for c in a] == [c.index for c in b] and [c.domains for c in a] == [c.domains for c in b]
    assert not np.array_equal(a[0].images, b[0].images)


def test_bench_cameras_shared_against_independent(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["bench", "--task", "seg", "--stream", "--cameras", "2", "--random-init", "--sequence", "clear2fog",
               "--stride", "300", "--size", "32x64", "--methods", "source,norm,tent", "--window", "2",
               "--adapt-every", "2", "--seeds", "0,1", "--out", str(out), "--cache", str(tmp_path / "cache"),
               "--no-progress", "--device", "cpu", "--workers", "1"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["cameras"] == ["clear2fog@front", "clear2fog@rear"] and res["seeds_done"] == [0, 1]
    rows = res["summary"]["rows"]
    assert list(rows) == ["source", "norm shared", "norm independent", "tent shared", "tent independent"]
    for r in rows.values():
        assert set(r["cells"]) == {"clear2fog@front", "clear2fog@rear", "mean"} and r["seeds"] == [0, 1]
        for k in (*res["phases"], "seq"):
            cams = [r["cells"][c][k]["mean"] for c in ("clear2fog@front", "clear2fog@rear")]
            assert r["cells"]["mean"][k]["mean"] == pytest.approx(np.nanmean(cams), abs=1e-3)
    paired = res["summary"]["paired"]
    assert set(paired) == {"norm", "tent"} and paired["tent"]["mean"]["seq"]["n"] == 2
    assert abs(paired["norm"]["mean"]["seq"]["mean"]) < 0.05   # per-frame BN alone: nothing to share
    # the same total number of adaptation steps: 4 frames per camera, adapt every 2
    assert res["costs"]["tent shared"]["steps"] == res["costs"]["tent independent"]["steps"] == [4, 4]
    assert res["costs"]["tent shared"]["models"] == [1, 1] and res["costs"]["tent independent"]["models"] == [2, 2]
    text = capsys.readouterr().out
    assert "tent: shared - independent" in text and "per phase, mean over cameras" in text
    assert (out / "paired_shared_minus_independent.csv").is_file() and (out / "cameras.csv").is_file()


def test_summary_gap_closed_and_paired_interval():
    def v(seq):
        return {"a@front": {"clear": seq, "seq": seq}, "a@rear": {"clear": seq + 2, "seq": seq + 2},
                "mean": {"clear": seq + 1, "seq": seq + 1}}

    values = {("source", "-"): {0: v(10), 1: v(12)}, ("ceiling", "-"): {0: v(30), 1: v(32)},
              ("m", "shared"): {0: v(21), 1: v(23.5)}, ("m", "independent"): {0: v(20), 1: v(22)}}
    s = C.summarise(values, [0, 1], ["a@front", "a@rear"], ["clear", "seq"])
    assert s["rows"]["m shared"]["cells"]["mean"]["seq"].mean == pytest.approx(23.25)
    assert s["gap_closed"]["m shared"]["mean"]["seq"] == pytest.approx((23.25 - 12) / (32 - 12))
    p = s["paired"]["m"]["mean"]["seq"]
    assert isinstance(p, Interval) and p.n == 2 and p.mean == pytest.approx(1.25)
    assert "m shared" in "\n".join(C.format_summary(s, ["a@front", "a@rear"], ["clear"], "t"))


@pytest.mark.parametrize("argv,match", [
    (["--cameras", "2"], "streaming"),
    (["--stream", "--cameras", "5"], "1..4"),
])
def test_bench_cameras_options(argv, match, tmp_path, capsys):
    assert main(["bench", "--task", "seg", "--random-init", "--out", str(tmp_path), *argv]) == 2
    assert match in capsys.readouterr().err


def test_node_bench_cameras_pure_parts(tmp_path):
    assert nodebench.cpu_seconds(os.getpid()) > 0
    assert np.isnan(nodebench.cpu_seconds(2 ** 22 + 7))
    lay = nodebench.camera_layouts(["front", "rear"])
    assert lay == {"shared": {"shared": ["front", "rear"]}, "independent": {"front": None, "rear": None},
                   "single": {"front": None}}

    def layout(nodes, cams, p50, cpu, steps):
        return {"publish_wall_s": 10.0, "rss_timeline": [(0.0, 500.0 * len(nodes)), (1.0, 600.0 * len(nodes))],
                "per_camera": {c: {"published": 100, "matched": 99, "not_output": 1, "miou": 50.0,
                                   "latency_ms": {"p50": p50, "p95": 2 * p50, "mean": p50},
                                   "timeline": {"t_s": [0.1, 0.2], "latency_ms": [p50, p50]}} for c in cams},
                "per_node": {n: {"cpu_s": cpu, "frames_dropped": 0, "adaptation_steps": steps} for n in nodes}}

    report = {"settings": {"method": "dplot", "cameras": ["front", "rear"], "rate_hz": 10.0, "size": [64, 128],
                           "frames": 100, "load_avg_at_start": [1.0, 1.0, 1.0], "load_avg_at_end": [2.0, 2.0, 2.0]},
              "layouts": {"shared": layout(["shared"], ["front", "rear"], 80.0, 10.0, 50),
                          "independent": layout(["front", "rear"], ["front", "rear"], 60.0, 10.0, 25),
                          "single": layout(["front"], ["front"], 50.0, 8.0, 25)}}
    report["summary"] = {n: nodebench.layout_summary(r, 10.0) for n, r in report["layouts"].items()}
    sh = report["summary"]["shared"]
    assert sh["cpu_s_per_frame"] == pytest.approx(10.0 / 200) and sh["steps_per_s"] == pytest.approx(5.0)
    assert sh["not_output_pct"] == pytest.approx(1.0) and sh["rss_max_mb"] == 600.0
    goals = nodebench.camera_goals(report["summary"])
    report["goals"] = goals
    assert goals["p50_le_2x_single"]["value"] == pytest.approx(80 / 50) and goals["p50_le_2x_single"]["met"]
    assert goals["cpu_le_0.6x_independent"]["value"] == pytest.approx(0.5) and goals["rss_le_1600mb"]["met"]
    assert "goal cpu_le_0.6x_independent: 0.5 -> met" in nodebench.format_cameras(report)
    png = nodebench.plot_cameras(report, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_node_bench_cameras_tiny_run(tmp_path):
    from tta_perception.ros.weather_loop import available

    ok, why = available()
    if not ok:
        pytest.skip(f"rclpy not importable: {why}")
    rc = main(["node-bench", "--cameras", "2", "--method", "source", "--frames", "4", "--rate", "5", "--size",
               "64x128", "--torch-threads", "1", "--startup-timeout", "60", "--no-plot", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "node_bench_cameras.json").read_text())
    assert list(report["layouts"]) == ["shared", "independent", "single"]
    sh = report["layouts"]["shared"]
    assert set(sh["per_camera"]) == {"front", "rear"} and list(sh["per_node"]) == ["shared"]
    assert len(report["layouts"]["independent"]["per_node"]) == 2
    for cam in sh["per_camera"].values():
        assert cam["matched"] >= 2 and 0 < cam["latency_ms"]["p50"] < 10_000 and 0 <= cam["miou"] <= 100
    assert report["summary"]["shared"]["cpu_s_per_frame"] > 0 and "goals" in report
