"""node-bench end to end with a tiny setting: a real tta_node process over DDS, a few frames."""
import json

import pytest

from tta_perception.ros.weather_loop import available

ok, why = available()
pytestmark = pytest.mark.skipif(not ok, reason=f"rclpy not importable: {why}")


def test_node_bench_few_frames(tmp_path):
    from tta_perception.cli.main import main

    rc = main(["node-bench", "--method", "source", "--frames", "8", "--rate", "10", "--size", "64x128",
               "--unique-frames", "4", "--no-overhead", "--no-plot", "--torch-threads", "1",
               "--startup-timeout", "25", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "node_bench.json").read_text())
    r = report["methods"]["source"]
    assert r["published"] == 8
    assert r["matched_stamps"] >= 4  # the node keeps only the newest frame; most arrive at 10 Hz
    assert r["unmatched_outputs"] == 0 and r["duplicate_outputs"] == 0
    assert len(r["timeline"]["latency_ms"]) == r["matched_stamps"]
    assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p95"] < 10_000
    assert 0 <= r["miou"] <= 100 and r["acc"] > 0
    nd = r["node_diagnostics"]
    assert nd["frames_processed"] >= r["matched_stamps"] - 1  # last /diagnostics may lag one frame
    assert nd["frames_received"] == 8
    assert r["growth"]["rss_end_mb"] > 0
    assert r["node_exit_code"] is not None
    # label flicker: only pairs of consecutive answered frames, never across the loop's wrap (k = 4)
    assert 0 <= r["flicker_frames"] <= 6 and (r["flicker_frames"] == 0 or 0 <= r["flicker"] <= 100)


def test_node_bench_label_flicker_follows_the_motion():
    """A textured scene sliding 2 px a frame: predictions that follow the truth flicker 0 %, ones that
    alternate with a wrong class 100 %; a missing output and the loop's wrap-around are not counted."""
    import cv2
    import numpy as np

    from tta_perception.bench.node_stats import label_flicker

    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (64, 192, 3)).astype(np.uint8), (0, 0), 2.0)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX)
    classes = np.repeat(np.arange(12) % 4, 16)[None].repeat(64, 0).astype(np.uint8)
    frames = [(np.ascontiguousarray(texture[:, 2 * k:2 * k + 128]), np.ascontiguousarray(classes[:, 2 * k:2 * k + 128]),
               "night") for k in range(6)]
    steady = {k: frames[k % 6][1] for k in range(12) if k != 8}  # the loop wraps at 6; frame 8 unanswered
    flicker = label_flicker(frames, steady)
    assert flicker["flicker_frames"] == 11 - 1 - 2  # pairs: 11 answered, minus the first, the wrap, 8 and 9
    assert flicker["flicker"] == 0.0 and flicker["flicker_per_domain"] == {"night": 0.0}
    alternating = {k: (frames[k % 6][1] + k % 2) % 4 for k in range(6)}
    assert label_flicker(frames, alternating)["flicker"] == 100.0


def test_node_bench_overhead_only(tmp_path):
    from tta_perception.cli.main import main

    rc = main(["node-bench", "--overhead-only", "--overhead-repeats", "3", "--size", "64x128",
               "--torch-threads", "1", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "node_bench.json").read_text())
    assert report["methods"] == {}
    lean, full = report["overhead"], report["overhead_all_outputs"]
    assert lean["outputs"] == ["class_ids"] and full["outputs"] == ["class_ids", "confidence", "overlay"]
    for o in (lean, full):
        conversion = o["decode_ms"] + o["to_input_ms"] + o["messages_ms"] + o["publish_ms"]
        assert o["conversion_publishing_ms"] == pytest.approx(conversion) and o["model_forward_ms"] > 0
        assert o["overhead_ms"] == pytest.approx(conversion + o["postprocess_ms"])
        assert o["overhead_pct_of_model"] == pytest.approx(100 * o["overhead_ms"] / o["model_forward_ms"])
        assert o["conversion_publishing_pct_of_model"] < o["overhead_pct_of_model"]
    assert not (tmp_path / "node_bench.png").exists()


def test_node_bench_memory_sweep_small(tmp_path):
    """The memory protocol end to end on a short ladder: refusals recorded, RSS of what runs."""
    from tta_perception.bench.memory import run_memory_bench
    from tta_perception.ros import node_bench as client

    report = run_memory_bench(out=tmp_path, methods=["source"], sizes=[(2048, 4096), (64, 128)], windows=[4],
                              frames_per_step=2, max_image_pixels=256 * 256, torch_threads=1, client=client,
                              log=lambda _line: None)
    steps = {s["name"]: s for s in report["steps"]}
    src = steps["source: largest input size, window 4"]
    assert src["accepted"] and src["params"]["input_size"] == [64, 128]
    assert src["refused"] and "max_memory_mb" in src["refused"][0]["reason"]
    assert not steps["must refuse: dplot 1024x2048"]["accepted"]
    assert all(s["rss_peak_mb"] > 0 for s in report["steps"] if s["accepted"])
    assert report["node_exit_code"] == 0
    for ext in ("txt", "md", "json", "csv"):
        assert (tmp_path / f"node_bench_memory.{ext}").is_file()


def test_node_bench_cycles_survive_a_kill(tmp_path):
    """Two weather cycles scored per phase and cycle; between them the node saves, is killed with
    SIGKILL and restarts with resume_from: the domain bank it had comes back."""
    from tta_perception.cli.main import main

    schedule = tmp_path / "tiny_loop.yaml"
    schedule.write_text("name: tiny_loop\nfps: 10\nframes: 16\nloop: true\nkeyframes:\n"
                        "  - {time: 0, preset: ClearNoon, domain: clear}\n  - {time: 0.4, preset: ClearNoon}\n"
                        "  - {time: 0.4, preset: ClearNight, domain: night}\n  - {time: 0.8, preset: ClearNight}\n")
    out = tmp_path / "out"
    rc = main(["node-bench", "--method", "tent+dm", "--cycles", "2", "--restart-between-cycles",
               "--schedule", str(schedule), "--stride", "1", "--rate", "5", "--size", "64x128",
               "--node-param", "domain_patience=1", "--no-overhead", "--no-plot", "--torch-threads", "1",
               "--startup-timeout", "60", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "node_bench.json").read_text())
    assert report["settings"]["frames_per_cycle"] == 8 and report["settings"]["frames"] == 16
    r = report["methods"]["tent+dm"]
    assert r["engine_method"] == "tent"
    # both processes' counters summed (one process alone counts 8); a frame or two published while
    # the restarted node's best-effort subscription is still being discovered never arrives and is
    # reported as not output, not lost from the count
    assert r["node_diagnostics"]["frames_received"] + r["not_output"] == 16 and r["not_output"] <= 2, r["node_diagnostics"]
    assert set(r["miou_per_cycle"]) <= {"clear@1", "night@1", "clear@2", "night@2"}
    assert {"clear@1", "clear@2"} <= set(r["miou_per_cycle"])
    (restart,) = r["restarts"]
    assert restart["before_frame"] == 8 and restart["killed_exit_code"] == -9
    known = int(float(restart["domains_known_before"]))
    assert known >= 1 and int(float(restart["domains_known_after"])) == known  # the bank came back
    assert (out / "node_state_tent_dm.pt").is_file()
    summary = report["cycles"]["methods"]["tent+dm"]
    assert summary["cycles"] == [1, 2] and set(summary["gain_last_over_first"]) == set(summary["phases"])
    # the tiny schedule switches at once: time to recover after each change on the per-frame mIoU
    assert report["cycles"]["recovery_defined"] is True
    assert len(r["frame_scores"]) == r["matched_stamps"]
    ks, ds = [x[0] for x in r["frame_scores"]], [x[1] for x in r["frame_scores"]]
    starts = [ks[i] for i in range(1, len(ks)) if ds[i] != ds[i - 1]]
    assert starts and [x["frame"] for x in summary["recovery"]] == starts
    assert set(summary["recovery_by_cycle"]) == {str(k // 8 + 1) for k in starts}  # JSON keys
    assert "mIoU per phase and weather cycle" in (out / "node_bench.txt").read_text()


def test_node_bench_cycles_need_a_looping_schedule():
    from tta_perception.bench.node import cycle_plan, method_params

    assert cycle_plan("dynamic", 1, 2) == (1200, 2400) and cycle_plan("dynamic", 2, 2) == (600, 1200)
    with pytest.raises(ValueError, match="loop"):
        cycle_plan("day2night", 1, 2)
    with pytest.raises(ValueError, match="divide"):
        cycle_plan("dynamic", 7, 2)
    assert method_params("dplot+dm") == ("dplot", {"domain_memory": True})
    assert method_params("dplot") == ("dplot", {})
    assert method_params("source+tf") == ("source", {"temporal_fusion": 0.6})
    assert method_params("dplot+dm+tf") == ("dplot", {"domain_memory": True, "temporal_fusion": 0.6})
    with pytest.raises(ValueError, match="adapting"):
        method_params("source+dm")


def test_node_bench_seed_renders_another_world():
    import numpy as np

    from tta_perception.bench.node import render_frames
    from tta_perception.world.sequences import iter_sequence

    quiet = lambda _line: None  # noqa: E731
    seed0 = render_frames("dynamic", 2, (32, 64), stride=1, workers=1, seed=0, log=quiet)
    seed1 = render_frames("dynamic", 2, (32, 64), stride=1, workers=1, seed=1, log=quiet)
    default = list(iter_sequence("dynamic", size=(32, 64), stop=2))
    assert all(np.array_equal(a[0], f.rgb) for a, f in zip(seed0, default))  # seed 0: the original world
    assert not np.array_equal(seed0[0][0], seed1[0][0])
    assert [d for _, _, d in seed0] == [d for _, _, d in seed1]  # same schedule, same phases


def test_status_names_are_built_and_parsed_by_one_definition():
    """The node names its statuses with the functions the readers parse them with; a namespace that
    merely starts like another is not that node."""
    from tta_perception.runtime import diagnostics as D

    fqn = D.node_fqn("/ns/")
    assert fqn == "/ns/tta_node" and D.is_node_status(D.status_name(fqn), "/ns")
    assert not D.is_node_status(D.status_name(D.node_fqn("/ns_b")), "/ns")
    camera = D.camera_status_name(fqn, "front")
    assert D.camera_of(camera, "/ns") == "front" and not D.is_node_status(camera, "/ns")
    assert D.camera_of(D.status_name(fqn), "/ns") is None and D.camera_of(camera, "/ns_b") is None
    assert [D.text(v) for v in (True, 0.5, float("nan"), 3)] == [D.TRUE, "0.5", "nan", "3"]


def test_outputs_are_matched_by_stamp_and_counters_summed_over_restarts():
    """What the DDS side records (``OutputBook``) into the report's statistics, without ROS."""
    import numpy as np

    from tta_perception.bench.node_record import MethodRecord, MethodSpec, OutputBook, Restart
    from tta_perception.bench.node_stats import TIMELINE_KEYS, method_result

    labels = np.arange(12, dtype=np.uint8).repeat(4)[None].repeat(8, 0)
    frames = [(np.zeros((8, 48, 3), np.uint8), labels, "clear")] * 3
    book = OutputBook()
    for k, stamp in enumerate((10, 20, 30)):
        book.sending(stamp, labels, "clear", k, cycle_key=f"clear@{k // 2 + 1}")
    t = book.sent[30]
    book.output(30, t + 5_000_000, lambda: labels)
    book.output(10, t + 9_000_000, lambda: labels[::2, ::2])  # resized to the truth
    book.output(99, t, lambda: labels)
    book.diagnostics({"state": "active", "frames_received": "2", "frames_dropped": "1"}, TIMELINE_KEYS)
    spec = MethodSpec("tent", "tent+dm", 3, 10.0, 7, window_s=1.0, cycle_frames=2)
    rec = MethodRecord("/ns", ["python"], {"ROS_DOMAIN_ID": "7", "HOME": "/x"}, book, publish_wall_s=0.3,
                       restarts=[Restart(2, 0.1, "saved", -9, 1.0, 42, "1", "1", "5")],
                       ended=[{"frames_received": "1", "frames_dropped": "0"}])
    r = method_result(spec, rec, frames)
    assert (r["matched_stamps"], r["unmatched_outputs"], r["stamps_out_of_order"]) == (2, 1, 1)
    assert r["not_output"] == 1 and r["miou"] == 100.0 and set(r["miou_per_cycle"]) == {"clear@1", "clear@2"}
    assert r["node_diagnostics"]["frames_received"] == 3 and r["node_diagnostics"]["frames_dropped"] == 1
    assert r["node_env"] == {"ROS_DOMAIN_ID": "7"} and r["restarts"][0]["killed_exit_code"] == -9
    assert list(r["latency_ms"]) == ["p50", "p95", "mean", "max"] and r["diag_timeline"][0]["frames_received"] == "2"
