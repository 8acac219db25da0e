"""``tta-perception prepare``: DPLOT phase A on the embedded source data writes a bundle that DPLOT
loads; amounts and deviations are what the docs say."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tta_perception.bench.prepare import OFFICIAL, ArrayBatches, PrepareSettings
from tta_perception.cli.main import main

torch.set_num_threads(1)


def test_prepare_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--task", "--samples", "--warmup-samples", "--official", "--out", "--dataset", "--data-root"):
        assert opt in out


def test_prepare_writes_bundle_that_dplot_loads(tmp_path, capsys):
    out = tmp_path / "signnet.bundle"
    rc = main(["prepare", "--task", "cls", "--random-init", "--quick", "--samples", "24", "--batch-size", "8",
               "--warmup-samples", "16", "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress",
               "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "selected blocks" in text and "deviations from the official phase A" in text

    from tta_perception.runtime.model_loader import load_model
    from tta_perception.engine import build_method
    from tta_perception.engine.bundle import load_bundle

    b = load_bundle(out)
    lm = load_model(architecture="signnet", random_init=True)
    cands = list(lm.model.candidate_blocks)
    assert list(b.scores) == cands                      # every candidate block scored
    assert b.selected_blocks and set(b.selected_blocks) <= set(cands)
    assert max(b.scaled_scores.values()) == pytest.approx(1.0)
    assert all(b.scaled_scores[k] > 0.75 for k in b.selected_blocks)
    assert all(b.scaled_scores[k] <= 0.75 for k in cands if k not in b.selected_blocks)
    assert b.metadata["weights_id"] == lm.weights_id
    assert b.metadata["prepare"]["samples"] == 24 and b.metadata["warmup"]["steps"] == 2   # 16 // 8
    assert any("instead of 50000" in d for d in b.metadata["deviations"])
    assert b.student_state is not None and b.teacher_state is not None and b.prototypes is not None

    m = build_method("dplot", lm.model, bundle=str(out))
    assert m.blocks == tuple(b.selected_blocks)
    for k, v in b.student_state.items():               # the warmed student was loaded
        assert torch.equal(lm.model.state_dict()[k], v)
    logits = m.step(torch.rand(4, 3, 64, 64))
    assert logits.shape == (4, 12) and torch.isfinite(logits).all()


def test_prepare_profiles_and_deviations():
    off = PrepareSettings.for_task("cls", "official")
    assert (off.samples, off.batch_size, off.warmup_samples) == (50_000, 128, 50_000)   # dplot.py / RMT conf
    assert off.deviations() == []
    assert PrepareSettings.for_task("cls", "official", source="imagenet_c").batch_size == 64
    d = PrepareSettings.for_task("cls", "default")
    assert d.samples < OFFICIAL["cls"]["samples"]
    devs = d.deviations()
    assert len(devs) == 3 and all(":" in x for x in devs)          # each with its reason
    s = PrepareSettings.for_task("seg", "default", samples=32)
    assert s.samples == 32 and s.profile == "default+custom"
    assert any("segmentation" in x for x in s.deviations())
    # the cache key changes with every setting and with the weights
    assert d.key("w1", "signnet") != d.key("w2", "signnet")
    assert d.key("w1", "signnet") != PrepareSettings.for_task("cls", "default", seed=1).key("w1", "signnet")


def test_array_batches_fixed_order_and_cycling():
    x = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    y = np.arange(10)
    b = ArrayBatches(x, y, 4)
    assert len(b) == b.epoch_batches == 3
    first = [yb.tolist() for _, yb in b]
    assert first == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [yb.tolist() for _, yb in b] == first                    # re-iterable, same order
    long = ArrayBatches(x, y, 4, length=5)
    assert [yb.tolist() for _, yb in long] == first + first[:2]      # cycles past one epoch
    xb, _ = next(iter(b))
    assert xb.dtype == torch.float32 and xb.shape == (4, 3, 2, 2) and float(xb.max()) <= 1.0


def test_prepare_rejects_bad_arguments(tmp_path, capsys):
    assert main(["prepare", "--random-init"]) == 2                   # no --task for the world
    assert "--task" in capsys.readouterr().err
    assert main(["prepare", "--task", "cls", "--quick", "--official", "--random-init"]) == 2
    assert main(["prepare", "--dataset", "cifar10_c", "--model", "wrn28_10", "--random-init"]) == 2  # no root


def test_prepare_takes_a_module_function_builder_only_with_the_opt_in(tmp_path, capsys):
    """Your own network without an installed entry point: ``--model pkg.mod:build`` is refused with
    the way out named, and runs with ``--allow-code-architecture``."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import test_ros_helpers as H

    args = ["prepare", "--task", "cls", "--model", H.arch("tiny_cls"), "--quick", "--samples", "16",
            "--batch-size", "8", "--warmup-samples", "8", "--out", str(tmp_path / "b.bundle"),
            "--cache", str(tmp_path / "cache"), "--no-progress", "--device", "cpu"]
    assert main(args) == 2
    assert "--allow-code-architecture" in capsys.readouterr().err
    assert main(args + ["--allow-code-architecture"]) == 0
    assert "selected blocks" in capsys.readouterr().out and (tmp_path / "b.bundle").is_file()


def test_prepare_on_a_folder_of_photos_of_different_sizes(tmp_path, capsys):
    """Your own labelled photos (``root/<class>/<image>``) of any sizes: resized to the model's input
    (or --size), and never more samples than the folder holds (said, not silently 50,000)."""
    import sys

    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import test_ros_helpers as H

    rng = np.random.default_rng(0)
    for c, sizes in (("cat", [(120, 90), (64, 200)]), ("cup", [(300, 160), (50, 50), (99, 77)])):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "photos" / c / f"{i}.png")
    out = tmp_path / "b.bundle"
    rc = main(["prepare", "--dataset", "folder", "--data-root", str(tmp_path / "photos"), "--model", H.arch("tiny_cls"),
               "--allow-code-architecture", "--batch-size", "2", "--warmup-samples", "4", "--size", "32x32",
               "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "the folder holds 5 images: phase A uses all of them (not 50000)" in text and out.is_file()
    assert main(["prepare", "--dataset", "folder", "--data-root", str(tmp_path / "photos"), "--model",
                 H.arch("tiny_cls"), "--allow-code-architecture", "--size", "32x48", "--out", str(out)]) == 2
    assert "square crop" in capsys.readouterr().err
