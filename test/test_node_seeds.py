"""node-bench seeds on constructed reports: intervals and memory's paired difference are known."""
import json

import pytest

from tta_perception.bench import node_seeds


def _report(seed, dplot, dm):
    def method(miou, clear2):
        return {"miou": miou, "latency_ms": {"p50": 20.0}, "miou_per_cycle": {"clear@1": 70.0, "clear@2": clear2}}
    return {"settings": {"seed": seed}, "cycles": {"methods": {}},
            "methods": {"dplot": method(*dplot), "dplot+dm": method(*dm)}}


def test_paired_difference_over_seeds(tmp_path):
    paths = []
    for seed, dplot, dm in ((0, (34.0, 64.0), (35.0, 69.0)), (1, (36.0, 68.0), (37.0, 73.0)),
                            (2, (35.0, 66.0), (36.0, 71.0))):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        (d / "node_bench.json").write_text(json.dumps(_report(seed, dplot, dm)))
        paths.append(d)
    assert node_seeds.main([str(p) for p in paths] + ["--out", str(tmp_path / "out")]) == 0
    out = json.loads((tmp_path / "out" / "node_seeds.json").read_text())
    assert out["seeds"] == [0, 1, 2]
    assert out["table"]["dplot"]["overall"]["mean"] == pytest.approx(35.0)
    assert out["table"]["dplot"]["overall"]["half_width"] > 0
    diff = out["pairs"]["dplot+dm"]["difference"]
    # every seed +1.0 overall and +5.0 on clear in cycle 2: zero spread, significant
    assert diff["overall"]["mean"] == pytest.approx(1.0) and diff["overall"]["std"] == pytest.approx(0.0)
    assert diff["clear@2"]["mean"] == pytest.approx(5.0) and diff["clear@2"]["significant"]
    assert diff["clear@1"]["mean"] == pytest.approx(0.0) and not diff["clear@1"]["significant"]
    assert "dplot+dm - dplot" in (tmp_path / "out" / "node_seeds.txt").read_text()


def test_refuses_what_is_not_a_cycles_report(tmp_path):
    f = tmp_path / "node_bench.json"
    f.write_text(json.dumps({"settings": {}, "methods": {}}))
    assert node_seeds.main([str(f)]) == 2
    f.write_text(json.dumps(_report(0, (1.0, 1.0), (1.0, 1.0))))
    assert node_seeds.main([str(f), str(f)]) == 2  # the same seed twice
