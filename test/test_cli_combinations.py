"""No silent no-op: an option that cannot take effect in a combination is refused with one line
naming it (exit status 2), before any work; the combinations that were voided now take effect."""
from __future__ import annotations

import json

import pytest

from tta_perception.cli.main import main

SEG_STREAM = ["bench", "--task", "seg", "--stream"]
REFUSED = [
    # bench: streaming-only options on the batch protocol, and the reverse
    (["bench", "--task", "seg", "--window", "2", "--predict", "student"], "--window, --predict: the streaming"),
    (["bench", "--task", "seg", "--flow-preset", "medium"], "--flow-preset: the streaming protocol's"),
    (["bench", "--task", "cls", "--temporal-fusion", "0.5"], "--temporal-fusion: the streaming protocol's"),
    (SEG_STREAM + ["--batch-size", "2"], "--batch-size: the batch protocol's"),
    # bench: one task's or one data source's options on another
    (["bench", "--task", "cls", "--stride", "2", "--size", "32x64"], "--stride, --size: frames of the embedded"),
    (["bench", "--task", "seg", "--severity", "3"], "--severity: classification"),
    (["bench", "--task", "seg", "--shuffle"], "--shuffle: the embedded world's classification order"),
    (["bench", "--task", "cls", "--data-root", "x"], "--data-root: a public --dataset only"),
    (["bench", "--task", "cls", "--setting", "gradual", "--severity", "3"], "--severity: --setting gradual"),
    # bench: video rows that could never link two frames (they would equal their base rows)
    (SEG_STREAM + ["--quick", "--temporal-fusion", "0.6"], "--quick spreads 12 frames over day2night, 10 s apart"),
    (SEG_STREAM + ["--stride", "10", "--temporal-fusion", "0.6", "--sequence", "clear2fog"],
     "--stride 10 on clear2fog puts them 1 s apart"),
    (SEG_STREAM + ["--methods", "dplot-tpl", "--setting", "mixed"], "dplot-tpl: follows the optical flow"),
    (["bench", "--task", "seg", "--methods", "dplot-tpl"], "dplot-tpl: streaming variants, add --stream"),
    (SEG_STREAM + ["--realtime", "10", "--temporal-fusion", "0.5"], "--temporal-fusion: not combined with --realtime"),
    # bench: the cameras protocol
    (["bench", "--task", "seg", "--cameras", "2"], "--cameras: the streaming protocol's"),
    (SEG_STREAM + ["--cameras", "2", "--cycles", "2"], "--cycles: not part of --cameras"),
    (SEG_STREAM + ["--cameras", "2", "--temporal-fusion", "0.5"], "--temporal-fusion: not part of --cameras"),
    (SEG_STREAM + ["--cameras", "2", "--methods", "dplot-tpl"], "dplot-tpl: not part of --cameras"),
    # bench: options another option voids
    (SEG_STREAM + ["--cycles", "2", "--frames", "20"], "--cycles: ends the sequence as --frames does"),
    (SEG_STREAM + ["--cycles", "2", "--sequence", "clear2fog"], "--cycles: whole weather cycles of a looping"),
    (["bench", "--task", "cls", "--seeds-for", "dplot"], "--seeds-for: picks the methods"),
    (["bench", "--task", "cls", "--no-ceiling", "--ceiling-weights", "x.pt"], "--ceiling-weights: the ceiling's"),
    (["bench", "--task", "cls", "--methods", "source,tent", "--bundle", "x"], "--bundle: phase A of DPLOT"),
    (["bench", "--task", "cls", "--random-init", "--weights", "x.pt"], "--random-init: --weights loads"),
    (["bench", "--task", "cls", "--realtime-costs", "r.json"], "--realtime-costs: needs --realtime"),
    (["bench", "--profile-step", "--stream"], "--stream: not used by --profile-step"),
    # bench: long drives (checkpoints inside streaming cells, resume, background runs)
    (["bench", "--task", "seg", "--checkpoint-every", "100"], "--checkpoint-every: the streaming protocol's"),
    (SEG_STREAM + ["--resume", "--overwrite"], "--overwrite: starts the run in --out over, --resume continues it"),
    (SEG_STREAM + ["--cameras", "2", "--resume"], "--resume: not part of --cameras"),
    (SEG_STREAM + ["--checkpoint-every", "-5"], "--checkpoint-every must be a number of frames >= 0"),
    (["bench", "--profile-step", "--detach"], "--detach: not used by --profile-step"),
    # node-bench: each mode's options (checked before rclpy is needed)
    (["node-bench", "--storm", "--schedule", "clear"], "--schedule: not used by --storm"),
    (["node-bench", "--storm", "--method", "tent,sar"], "--storm starts the node with one --method"),
    (["node-bench", "--memory", "--rate", "5"], "--rate: not used by --memory"),
    (["node-bench", "--cameras", "2", "--overhead-only"], "--overhead-only: not used by --cameras"),
    (["node-bench", "--overhead-only", "--method", "tent"], "--method: not used by --overhead-only"),
    (["node-bench", "--storm-calls", "5"], "--storm-calls: options of --storm"),
    (["node-bench", "--no-overhead", "--overhead-repeats", "3"], "--overhead-repeats: not used with --no-overhead"),
    (["node-bench", "--restart-between-cycles"], "--restart-between-cycles: needs --cycles"),
    # evaluate and demo: the other task's / mode's options
    (["evaluate", "--task", "cls", "--stride", "3"], "--stride: --task seg only"),
    (["evaluate", "--task", "seg", "--n", "10", "--severity", "3"], "--n, --severity: --task cls only"),
    (["demo", "--offline", "--duration", "3"], "--duration: loop mode only"),
    (["demo", "--frames", "10"], "--frames: offline mode only: add --offline"),
]


@pytest.mark.parametrize("argv,message", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_combination_is_refused_in_one_line(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"tta-perception {argv[0]}: error: ")
    assert not (tmp_path / "out").exists()                            # refused before any work


def test_quick_keeps_the_stride_given():
    """--quick takes 12 frames of each sequence: spread over it, or the first ones at an explicit
    --stride (--stride 1 used to be resampled like no --stride)."""
    from tta_perception.bench.suite import BenchConfig, seg_range
    from tta_perception.world.schedule import load_schedule

    fog, dynamic = load_schedule("clear2fog"), load_schedule("dynamic")
    quick = dict(task="seg", methods=["source"], quick=True)
    assert seg_range(BenchConfig(**quick), fog) == (None, fog.frames // 12)
    assert seg_range(BenchConfig(**quick, stride=1), fog) == (12, 1)
    assert seg_range(BenchConfig(**quick, stride=3, start=30), fog) == (66, 3)
    assert seg_range(BenchConfig(**quick, stride=300), fog) == (fog.frames, 300)   # fewer than 12 in the sequence
    assert seg_range(BenchConfig(**quick, stride=2, frames=40), fog) == (40, 2)    # --frames wins
    assert seg_range(BenchConfig(task="seg", methods=["source"]), fog) == (None, 1)
    assert seg_range(BenchConfig(task="seg", methods=["source"], cycles=1), dynamic) == (1200, 1)


def test_quick_stride_one_fuses_consecutive_frames(tmp_path):
    """The case that used to be voided: `--quick --stride 1 --temporal-fusion W` now links every
    frame to the previous one and the '+tf' row is its own (before: no link, a copy of the base row)."""
    out = tmp_path / "out"
    assert main(["bench", "--task", "seg", "--stream", "--quick", "--stride", "1", "--temporal-fusion", "0.6",
                 "--random-init", "--sequence", "clear2fog", "--size", "32x64", "--methods", "source", "--out",
                 str(out), "--cache", str(tmp_path / "cache"), "--no-progress", "--device", "cpu", "--workers", "1",
                 "--no-plot", "--no-ceiling"]) == 0
    runs = {r["method"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["source"]["frames"] == 12 and runs["source"]["temporal"]["links"] == 11
    assert runs["source+tf"]["temporal"]["fused_frames"] == 11
    assert runs["source+tf"]["flicker_overall"] < runs["source"]["flicker_overall"]


# ------------------------------------------------------------------------------------------ replay
@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    pytest.importorskip("rosbags")
    from tta_perception.bags.make import make_bag

    root = tmp_path_factory.mktemp("combinations")
    make_bag("clear2fog", root / "one", frames=2, size=(32, 64), progress=False)
    make_bag("clear2fog", root / "two", frames=2, size=(32, 64), progress=False, views=["front", "rear"])
    return root


@pytest.mark.parametrize("bag,model,extra,message", [
    ("one", "tiny_cls", ["--overlay"], "--overlay: a classifier's output has no map"),
    ("one", "tiny_cls", ["--temporal-fusion", "0.5"], "--temporal-fusion: a classifier's output"),
    ("one", "tiny_seg", ["--method", "tent", "--bundle", "BUNDLE"], "--bundle: method 'tent' takes no"),
    ("two", "tiny_seg", ["--truth-topic", "/camera/truth"], "--truth-topic names the ground truth of one"),
])
def test_replay_refuses_what_it_would_ignore(bags, bag, model, extra, message, tmp_path, capsys):
    import test_ros_helpers as H

    from tta_perception.paths import WEIGHTS_DIR

    extra = [str(WEIGHTS_DIR / "driveseg_dplot.bundle") if a == "BUNDLE" else a for a in extra]
    out = tmp_path / "out"
    assert main(["replay", str(bags / bag), "--out", str(out), "--model", H.arch(model), "--architecture",
                 H.arch(model), "--method", "source", "--device", "cpu", "--no-progress", "--no-plot", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "out.resume").exists()
