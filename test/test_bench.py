"""``tta-perception bench``: streams in protocol order, tiny end-to-end runs that write the table as
JSON/CSV/PNG, resets, determinism, the headline formula."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from tta_perception.bench import report, streams
from tta_perception.bench.common import PeakMemory
from tta_perception.runtime.model_loader import load_model
from tta_perception.bench.runner import RunOptions, run_method
from tta_perception.bench.variants import VARIANTS, build_variant, resolve_methods
from tta_perception.cli.main import main

torch.set_num_threads(1)
CHEAP = ["gaussian_noise", "brightness", "contrast"]   # fast corruptions (glass/zoom blur cost 20-30 ms/image)


def test_bench_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--task", "--methods", "--setting", "--batch-size", "--stream", "--quick", "--seeds", "--out",
                "--bundle", "--dataset", "--data-root", "--model", "--weights"):
        assert opt in out


def test_method_names_and_groups():
    assert resolve_methods("default") == ["source", "norm", "tent", "eata", "sar", "cotta", "rmt", "dplot"]
    abl = resolve_methods("ablations")
    assert {"dplot-nobs", "dplot-nopair", "tent+bs", "eata+bs", "sar+bs"} <= set(abl)
    assert resolve_methods("source,dplot,source") == ["source", "dplot"]
    with pytest.raises(ValueError, match="unknown method"):
        resolve_methods("source,bogus")


def test_variants_use_the_bundle_blocks(tmp_path):
    from tta_perception.engine.bundle import Bundle

    lm = load_model(architecture="signnet", random_init=True)
    b = Bundle(selected_blocks=["layer1.0"])
    m = build_variant("tent+bs", lm.model, bundle=b)
    names = {n for n, p in lm.model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("layer1.0.") for n in names)     # all of the block, nothing else
    assert m.cfg.collapse_reset is False and m.cfg.nan_guard is False  # paper protocol by default
    d = build_variant("dplot-nopair", load_model(architecture="signnet", random_init=True).model, bundle=b)
    assert d.cfg.paired_views is False and d.blocks == ("layer1.0",)
    d = build_variant("dplot-nobs", load_model(architecture="signnet", random_init=True).model, bundle=b)
    assert d.cfg.block_selection is False and len(d.entropy_param_names) > 20
    with pytest.raises(ValueError, match="bundle"):
        build_variant("dplot", load_model(architecture="signnet", random_init=True).model)
    assert all(not VARIANTS[n].prior for n in ("dplot", "dplot-nobs", "tent+bs"))


def test_cls_settings_order(tmp_path):
    kw = dict(n=4, batch_size=2, corruptions=CHEAP[:2], cache_dir=tmp_path, progress=False)
    grad = streams.world_cls_stream(setting="gradual", **kw)
    doms = [c.domains[0] for c in grad]
    assert doms[::2] == doms[1::2]                                   # 2 chunks per visit
    assert doms[::2] == [f"{c}@{s}" for c in CHEAP[:2] for s in (1, 2, 3, 4, 5, 4, 3, 2, 1)]
    assert grad.column_domain == {c: f"{c}@5" for c in CHEAP[:2]}
    assert not any(c.reset for c in grad)

    cont = list(streams.world_cls_stream(setting="continual", **kw))
    assert [c.domains[0] for c in cont] == [CHEAP[0]] * 2 + [CHEAP[1]] * 2 and not any(c.reset for c in cont)
    res = list(streams.world_cls_stream(setting="reset_each_shift", **kw))
    assert [c.reset for c in res] == [False, False, True, False]    # reset at the start of each new domain
    for a, b in zip(cont, res):
        assert np.array_equal(a.images, b.images)                   # same data as continual

    mixed = list(streams.world_cls_stream(setting="mixed", **kw))
    flat = [d for c in mixed for d in c.domains]
    assert sorted(flat) == sorted([CHEAP[0]] * 4 + [CHEAP[1]] * 4)   # every sample once
    assert flat != sorted(flat)                                      # domains interleaved
    again = [d for c in streams.world_cls_stream(setting="mixed", **kw) for d in c.domains]
    assert flat == again                                             # seeded
    # the held-out crops of `tta-perception evaluate` (crop seed 7), corrupted with seed 7, cached
    from tta_perception.world.corruptions import corrupt_images
    from tta_perception.world.sign_crops import render_sign_crops
    from tta_perception.world.weather import preset
    x, y = render_sign_crops(4, preset("ClearNoon"), seed=7)
    assert np.array_equal(np.concatenate([cont[0].images, cont[1].images]), corrupt_images(x, CHEAP[0], 5, seed=7))
    assert np.array_equal(np.concatenate([cont[0].labels, cont[1].labels]), y)


def test_reset_each_shift_resets_the_method(tmp_path):
    lm = load_model(architecture="signnet", random_init=True)
    st = streams.world_cls_stream(n=4, batch_size=2, setting="reset_each_shift", corruptions=CHEAP,
                                  cache_dir=tmp_path, progress=False)
    r = run_method("tent", lm.model, st, RunOptions(device=torch.device("cpu"), progress=False))
    assert r.stats["resets"] == len(CHEAP) - 1 and r.stats["steps"] == 6
    st = streams.world_cls_stream(n=4, batch_size=2, setting="continual", corruptions=CHEAP, cache_dir=tmp_path,
                                  progress=False)
    r2 = run_method("tent", lm.model, st, RunOptions(device=torch.device("cpu"), progress=False))
    assert r2.stats["resets"] == 0
    assert set(r.domains) == set(CHEAP) and all(0 <= v <= 100 for v in r.domains.values())
    r3 = run_method("tent", lm.model, st, RunOptions(device=torch.device("cpu"), progress=False))
    assert r3.domains == r2.domains and r3.series_y == r2.series_y   # deterministic with the seed


def test_seg_stream_settings(tmp_path):
    kw = dict(stride=150, stop=1050, size=(32, 64), batch_size=3, cache_dir=tmp_path, workers=1, progress=False)
    res = list(streams.world_seg_stream("clear2fog", setting="reset_each_shift", **kw))
    for c in res:
        assert len(set(c.domains)) == 1                             # batches never straddle a shift
    doms = [c.domains[0] for c in res]
    assert [c.reset for c in res] == [i > 0 and doms[i] != doms[i - 1] for i in range(len(res))]
    assert sum(c.reset for c in res) == len(dict.fromkeys(doms)) - 1 >= 1
    cont = list(streams.world_seg_stream("clear2fog", setting="continual", **kw))
    assert [i for c in cont for i in c.index] == list(range(0, 1050, 150))   # time order
    assert all(len(c) <= 3 for c in cont) and not any(c.reset for c in cont)
    with pytest.raises(ValueError, match="gradual"):
        streams.world_seg_stream("clear2fog", setting="gradual", **kw)


def test_quick_cls_bench_writes_table_json_csv_png(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["bench", "--task", "cls", "--quick", "--random-init", "--methods", "source,tent,dplot",
               "--corruptions", ",".join(CHEAP), "--n", "8", "--batch-size", "4", "--out", str(out),
               "--cache", str(tmp_path / "cache"), "--no-progress", "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "headline: DPLOT" in text and "x src fwd" in text
    res = json.loads((out / "results.json").read_text())
    st = res["streams"]["corruptions"]
    assert st["columns"] == CHEAP
    assert list(st["rows"]) == ["source", "tent", "dplot"]
    for m, row in st["rows"].items():
        assert set(row["cells"]) == set(CHEAP)
        assert row["mean"] == pytest.approx(np.mean([row["cells"][c] for c in CHEAP]), abs=1e-3)
        assert row["ms_per_frame"] > 0 and row["x_source_forward"] > 0 and row["frames"] == 24
        assert row["mem_kind"].startswith("cpu_")
    assert st["source_forward_ms"] > 0
    assert st["rows"]["dplot"]["stats"]["blocks"] == res["bundle"]["selected_blocks"]
    assert res["bundle"]["how"].startswith("prepared now")          # phase A ran once and was cached
    assert st["headline"]["best_prior"] in ("source", "tent")
    assert res["machine"]["cpu_count"] >= 1 and res["config"]["methods"] == ["source", "tent", "dplot"]
    with open(out / "table_corruptions.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:len(CHEAP) + 2] == ["method", *CHEAP, "mean"]
    assert "ms_per_frame" in rows[0] and "x_source_forward" in rows[0] and "peak_mem_mib" in rows[0]
    assert [r[0] for r in rows[1:]] == ["source", "tent", "dplot"]
    png = (out / "stream_corruptions.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_streaming_seg_bench(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["bench", "--task", "seg", "--stream", "--random-init", "--sequence", "clear2fog", "--stride", "200",
               "--size", "32x64", "--methods", "source,norm,dplot", "--window", "2", "--adapt-every", "2",
               "--quick", "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress", "--device", "cpu",
               "--workers", "1"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    st = res["streams"]["clear2fog"]
    assert st["batch_size"] == 1 and res["protocol"].startswith("streaming")
    rows = st["rows"]
    assert rows["source"]["streaming"]["adapt_steps"] == 0          # the source model only predicts
    assert rows["norm"]["streaming"]["adapt_steps"] == 3             # 6 frames, adapt every 2
    assert rows["dplot"]["streaming"]["predict_ms"] > 0 and rows["dplot"]["seq"] >= 0
    assert (out / "stream_clear2fog.png").is_file() and (out / "table_clear2fog.csv").is_file()
    assert "better than source on clear2fog" in capsys.readouterr().out


def test_headline_formula():
    rows = {"source": {"mean": 46.4}, "rmt": {"mean": 26.3}, "dplot": {"mean": 23.9}, "dplot-nobs": {"mean": 20.0}}
    h = report.headline(rows, "cls")
    assert h["best_prior"] == "rmt" and h["dplot_wins"]              # ablations are not prior methods
    assert h["relative_error_reduction"] == pytest.approx((26.3 - 23.9) / 26.3)   # the paper's 9.1 %
    seg = report.headline({"norm": {"seq": 40.0}, "dplot": {"seq": 46.0}}, "seg", "seq")
    assert seg["relative_error_reduction"] == pytest.approx(0.1)    # error 60 -> 54
    assert report.headline({"source": {"mean": 1.0}}, "cls") is None


def test_peak_memory_sees_torch_allocations():
    with PeakMemory(torch.device("cpu")) as m:
        x = torch.ones(64, 1024, 1024)                               # 256 MiB
        x += 1
        del x
    assert m.kind == "cpu_rss_growth_sampled"
    assert m.peak_mib > 128


def _tiny_public_model(tmp_path):
    """A registered tiny architecture + weights file, standing in for wrn28_10 + Standard.pt."""
    from engine_fixtures import TinyCls
    from tta_perception.models.registry import _BUILDERS, register_model

    if "test-tiny-cls" not in _BUILDERS:
        @register_model("test-tiny-cls")
        def _build(num_classes: int = 10, checkpoint=None):
            m = TinyCls(num_classes=num_classes)
            if checkpoint is not None:
                m.load_state_dict(torch.load(checkpoint, weights_only=True))
            return m.eval()
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(TinyCls(num_classes=10).state_dict(), path)
    return path


def test_public_dataset_route(tmp_path):
    from tta_perception.world.corruptions import CORRUPTIONS

    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    rng = np.random.default_rng(0)
    n = 4                                                            # images per severity
    for c in CORRUPTIONS:
        np.save(root / f"{c}.npy", rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8))
    np.save(root / "labels.npy", np.tile(np.arange(n) % 10, 5).astype(np.int64))
    weights = _tiny_public_model(tmp_path)
    out = tmp_path / "out"
    base = ["bench", "--dataset", "cifar10_c", "--data-root", str(root), "--model", "test-tiny-cls",
            "--weights", str(weights), "--cache", str(tmp_path / "cache"), "--no-progress", "--device", "cpu"]
    assert main(base + ["--methods", "source,norm,tent", "--batch-size", "2", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    st = res["streams"]["cifar10_c"]
    assert st["columns"] == list(CORRUPTIONS) and st["batch_size"] == 2
    assert list(st["rows"]) == ["source", "norm", "tent"] and st["rows"]["source"]["frames"] == 15 * n
    assert res["model"]["arch"] == "test-tiny-cls"
    assert main(base + ["--methods", "source", "--setting", "gradual", "--batch-size", "4",
                        "--out", str(out / "g")]) == 0
    g = json.loads((out / "g" / "results.json").read_text())["streams"]["cifar10_c"]
    assert g["rows"]["source"]["frames"] == 15 * 9 * n             # severities 1-2-3-4-5-4-3-2-1
    assert list(g["rows"]["source"]["all_domains"])[:5] == [f"gaussian_noise_{s}" for s in (1, 2, 3, 4, 5)]
    # DPLOT needs phase A: without a bundle or source data it says so
    assert main(base + ["--methods", "dplot", "--out", str(out / "d")]) == 2


def test_streaming_predict_student_mode(tmp_path):
    lm = load_model(architecture="driveseg", random_init=True)
    st = streams.world_seg_stream("clear2fog", setting="continual", batch_size=1, stride=300, size=(32, 64),
                                  cache_dir=tmp_path, workers=1, progress=False)
    opts = RunOptions(device=torch.device("cpu"), streaming=True, window=2, adapt_every=2, predict_mode="student",
                      progress=False)
    r = run_method("tent", lm.model, st, opts)
    assert r.streaming["predict_mode"] == "student" and r.streaming["adapt_steps"] == 2 and r.frames == 4
    r = run_method("cotta", lm.model, st, opts)        # CoTTA predicts with its teacher: keeps its own mode
    assert r.streaming["predict_mode"] == "method"
