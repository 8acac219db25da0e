"""``tta-perception fleet`` on a local Ray (2 CPUs, listening on 127.0.0.1 only, started once for
this module and shut down after it): every bag's output equals a sequential ``replay`` of it, bit for
bit; a corrupt bag fails alone with its reason; a worker killed half-way through a bag is retried and
completes with the same output; an interrupted run, resumed, gives the uninterrupted run's summary;
without Ray the bags run one after another in the process, saying so once. What needs no cluster:
bag lists and names, Ray addresses and the resources a task asks for."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("rosbags")

TEST_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TEST_DIR))
from tta_perception.bags import io as B  # noqa: E402
from tta_perception.bags.make import make_bag  # noqa: E402
from tta_perception.bags.replay import ReplayOptions, replay  # noqa: E402
from tta_perception.bench.output import to_jsonable  # noqa: E402
from tta_perception.cli.main import main as cli  # noqa: E402
from tta_perception.fleet import cluster as C  # noqa: E402
from tta_perception.fleet.inputs import bag_names, find_bags  # noqa: E402
from tta_perception.fleet.run import FleetConfig, run_fleet  # noqa: E402
from tta_perception.runtime.params import node_config  # noqa: E402

SIZE = (32, 64)
SLOW = "fleet_models:slow_tiny"  # the tiny test network, 30 ms slower per forward (test/fleet_models.py)
OVERRIDES = dict(model=SLOW, architecture=SLOW, allow_code_architecture=True, method="tent", device="cpu",
                 input_size=[32, 64], window=4, adapt_every=2)
CFG = node_config(OVERRIDES)
REPLAY = dict(checkpoint_every=5, plot=False)
METHODS = ["source", "tent"]
TIMING = ("wall_s", "fps", "model_fps", "last_predict_ms", "mean_predict_ms", "last_adapt_ms", "mean_adapt_ms",
          "last_step_ms", "integrity", "resumed_from_frame")  # the last: where a retried task went on


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """Three short bags (night MCAP, rain MCAP, fog sqlite3), a corrupt one (its MCAP cut in half)
    and a longer one for killing its worker half-way."""
    root = tmp_path_factory.mktemp("fleet_bags")
    made = {}
    for name, seq, storage in (("night", "day2night", "mcap"), ("rain", "clear2rain", "mcap"),
                               ("fog", "clear2fog", "sqlite3")):
        made[name] = root / "good" / name
        make_bag(seq, made[name], frames=10, start_frame=900, size=SIZE, storage=storage, progress=False)
    made["corrupt"] = root / "good" / "corrupt"
    shutil.copytree(made["night"], made["corrupt"])
    mcap = next(made["corrupt"].glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    made["long"] = root / "long" / "dusk"
    make_bag("day2night", made["long"], frames=60, start_frame=600, size=SIZE, progress=False)
    return made


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module: 2 CPUs, no dashboard, 127.0.0.1 only, this module's token, its
    session files in a temporary folder; the workers import the test models from test/."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TEST_DIR), *filter(None, [saved["PYTHONPATH"]])])
    os.environ["RAY_AUTH_MODE"], os.environ["RAY_AUTH_TOKEN"] = "token", secrets.token_hex(32)
    ray = C.import_ray(local=True)
    if ray is None:
        pytest.skip("ray is not installed (pip install -e '.[fleet]')")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
        yield ray
    finally:
        ray.shutdown()
        deadline = time.time() + 30
        while _processes_under(temp) and time.time() < deadline:
            time.sleep(0.2)
        left = _processes_under(temp)
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        assert not left, f"Ray processes left running: {left}"


def _processes_under(folder: str) -> list[int]:
    """Processes whose command line names ``folder`` (Ray's own, started for this module)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if folder.encode() in cmd:
                found.append(int(pid))
    return found


def _fleet(bags, out, **kw) -> FleetConfig:
    settings = C.ClusterSettings(workers=kw.pop("workers", 2))
    return FleetConfig(bags=[str(b) for b in bags], out=str(out), cfg=dict(CFG), methods=kw.pop("methods", METHODS),
                       replay=dict(REPLAY), cluster=settings, progress=False, plot=kw.pop("plot", False), **kw)


@pytest.fixture(scope="module")
def fleet_run(bags, ray_local, tmp_path_factory):
    """The three good bags and the corrupt one, source and tent, 2 at once, uninterrupted."""
    out = tmp_path_factory.mktemp("fleet") / "run"
    summary = run_fleet(_fleet([bags[k] for k in ("night", "rain", "fog", "corrupt")], out, plot=True),
                        log=lambda m: None)
    return out, summary


# ----------------------------------------------------------------------------------------- helpers
def _messages(path: Path) -> dict[str, list[bytes]]:
    with B.BagReader(path) as r:
        out: dict[str, list[bytes]] = {}
        for t, log, msg in r.messages(list(r.topics), raw=True):
            out.setdefault(t, []).append((log, bytes(msg)))
        return out


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    return obj


def _same_as_replay(bag: Path, fleet_out: Path, method: str, tmp: Path) -> None:
    """The fleet's output bag of ``bag`` equals ``replay`` of it (torch pinned to the task's 1
    thread): every message's bytes and stamp, the metrics files, replay.json but its timings."""
    ref = tmp / f"ref_{bag.name}_{method}"
    with C.pinned_threads(1):
        replay(bag, ref, {**CFG, "method": method}, ReplayOptions(**REPLAY, progress=False))
    got = fleet_out / "bags" / method / bag.name
    assert _messages(got) == _messages(ref)
    for name in ("replay_frames.csv", "replay_domains.csv", "replay_summary.json"):
        assert (got / name).read_bytes() == (ref / name).read_bytes(), name
    a, b = json.loads((got / "replay.json").read_text()), json.loads((ref / "replay.json").read_text())
    assert _strip(a) == _strip(b)


def _comparable(summary: dict) -> dict:
    """A summary without what depends on timing or on which invocation ran a bag."""
    keep = ("bag", "method", "status", "tags", "frames", "miou", "acc", "flicker", "adapt_steps", "reason")
    rows = [{k: r[k] for k in keep} | {k: v for k, v in r.items() if k.startswith("miou_")} for r in summary["rows"]]
    return to_jsonable({"rows": rows, "per_tag": summary["per_tag"], "overall": summary["overall"],
                        "paired": summary["paired"], "failed": summary["failed"]}, None)  # NaN -> None


# ------------------------------------------------------------------------------ without a cluster
def test_bag_lists_globs_and_folders_name_each_bag_once(bags, tmp_path):
    good = bags["night"].parent
    listing = tmp_path / "lists" / "bags.txt"
    listing.parent.mkdir()
    listing.write_text(f"# the fleet\n{good / 'night'}\n../missing_bag   # kept: reported as that bag's failure\n"
                       f"{good}/r*\n")
    found = find_bags([str(good / "fog"), str(listing), str(good)])
    assert found[:3] == [good / "fog", good / "night", tmp_path / "missing_bag"]
    assert found[3] == good / "rain" and set(found[4:]) == {good / "corrupt"}
    with pytest.raises(ValueError, match="no bag folder"):
        find_bags([str(tmp_path / "lists")])
    with pytest.raises(ValueError, match="storage file"):
        find_bags([str(next(bags["night"].glob("*.mcap")))])
    names = bag_names([Path("/a/x/night"), Path("/b/x/night"), Path("/c/rain")])
    assert list(names.values()) == ["a__x__night", "b__x__night", "rain"]


def test_ray_addresses_and_the_resources_a_task_asks_for():
    for good in ("auto", "10.0.0.5:6379", "ray://head.svc:10001", "[::1]:6379"):
        assert C.check_address(good) == good
    for bad in ("10.0.0.5", "http://x:1", "host:99999", "a b:1", "; rm -rf /:1"):
        with pytest.raises(ValueError, match="--ray-address"):
            C.check_address(bad)
    assert C.task_resources(2, 0) == {"num_cpus": 2}
    assert C.task_resources(1, 0.5) == {"num_cpus": 1, "num_gpus": 0.5}
    with pytest.raises(ValueError, match="--gpus-per-bag"):
        C.task_resources(1, 1.5)
    nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 4.0}]
    assert C.placeable(nodes, 2, 0.5) == 2          # two half-GPU tasks on the one GPU
    assert C.placeable(nodes, 1, 0) == 12 and C.placeable(nodes, 1, 0, workers=3) == 3
    with pytest.raises(ValueError, match="no node of the Ray cluster"):
        C.placeable(nodes, 16, 0)


def test_an_address_goes_to_ray_init_and_nowhere_else(monkeypatch):
    """A stand-in for the ray module: joining a cluster passes the address to ``ray.init`` alone,
    the nodes' resources decide how many tasks run at once, and nothing else is started."""
    calls = []

    class FakeRay:
        __version__ = "0"

        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**kw):
            calls.append(("init", kw))

        @staticmethod
        def nodes():
            return [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 64}}]

        @staticmethod
        def cluster_resources():
            return {"CPU": 8.0, "GPU": 2.0}

        @staticmethod
        def shutdown():
            calls.append(("shutdown", {}))

    monkeypatch.setattr(C, "import_ray", lambda local=False: FakeRay)
    with C.Cluster(C.ClusterSettings(address="ray://head:10001", cpus=2, gpus=0.5)) as cl:
        assert cl.parallel == 4 and cl.info["address"] == "ray://head:10001"
    assert calls[0][0] == "init" and calls[0][1]["address"] == "ray://head:10001"
    assert "num_cpus" not in calls[0][1] and calls[-1][0] == "shutdown"
    with pytest.raises(ValueError, match="--ray-address"):
        C.Cluster(C.ClusterSettings(address="head")).__enter__()


def test_cli_refuses_bad_shares_and_addresses_in_one_line(bags, tmp_path, capsys):
    for extra, what in ((["--gpus-per-bag", "0.5"], "needs --device cuda"),
                        (["--ray-address", "nowhere"], "--ray-address"),
                        (["--workers", "0"], "--workers")):
        assert cli(["fleet", str(bags["night"]), "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert what in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------- on local Ray
def test_each_bag_equals_its_replay_and_a_corrupt_bag_fails_alone(fleet_run, bags, tmp_path):
    out, summary = fleet_run
    by = {(r["bag"], r["method"]): r for r in summary["rows"]}
    for m in METHODS:
        bad = by[("corrupt", m)]
        assert bad["status"] == "failed" and "corrupt" in bad["reason"] and "\n" not in bad["reason"]
        for name in ("night", "rain", "fog"):
            assert by[(name, m)]["status"] == "ok"
            _same_as_replay(bags[name], out, m, tmp_path)
            rec = json.loads((out / "records" / m / f"{name}.json").read_text())
            ref = json.loads((tmp_path / f"ref_{name}_{m}" / "replay_summary.json").read_text())["table"][m]
            assert {d: v["miou"] for d, v in rec["table"].items()} == {d: v["miou"] for d, v in ref.items()}
            assert rec["flicker_pixels"] and rec["peak_rss_mb"] > 0 and rec["threads"] == 1
    assert by[("night", "tent")]["tags"] == "night" and by[("fog", "source")]["tags"] == "fog"
    assert by[("rain", "tent")]["adapt_steps"] > 0 == by[("rain", "source")]["adapt_steps"]
    assert set(summary["tags"]) == {"night", "rain", "fog"}
    assert summary["overall"]["tent"]["bags"] == 3 and summary["overall"]["tent"]["failed"] == 1
    assert {(p["metric"], p["cell"]) for p in summary["paired"]} >= {("miou", "all"), ("flicker", "all")}
    assert next(p for p in summary["paired"] if p["cell"] == "all")["bags"] == 3
    for f in ("summary.txt", "summary.json", "summary.csv", "tags.csv", "paired.csv", "summary.png", "timeline.png"):
        assert (out / f).is_file(), f
    assert "failed: corrupt" in (out / "summary.txt").read_text()
    assert summary["cluster"]["engine"] == "ray" and summary["cluster"]["parallel"] == 2
    _check_quality(out, summary)


def _check_quality(out: Path, summary: dict) -> None:
    """Each bag's label-free quality estimate (the node's 'quality', on by default) in its record and the
    summary: the mean estimate and frames per level of its replay.json, validated against the bag's
    ground truth; per method pooled over the bags (frame-weighted); a failed bag has none."""
    levels = ("OK", "WARN", "ERROR")
    by = {(r["bag"], r["method"]): r for r in summary["rows"]}
    text = (out / "summary.txt").read_text()
    assert "per bag: mean quality estimate (estimated pixel accuracy; frames OK / WARN / ERROR)" in text
    for m in METHODS:
        means = []
        for name in ("night", "rain", "fog"):
            q = json.loads((out / "bags" / m / name / "replay.json").read_text())["quality"]
            rec = json.loads((out / "records" / m / f"{name}.json").read_text())["quality"]
            assert {k: rec[k] for k in ("mean_estimate", "frames", "levels", "calibrated")} == \
                {k: q[k] for k in ("mean_estimate", "frames", "levels", "calibrated")}
            assert rec["frames"] == 10 and sum(rec["levels"].values()) == 10 and rec["validation"]["frames"] == 10
            row = by[(name, m)]
            assert row["quality"] == pytest.approx(q["mean_estimate"])
            assert [row[f"quality_{k.lower()}"] for k in levels] == [q["levels"][k] for k in levels]
            assert f"{row['quality']:.2f} ({row['quality_ok']} / {row['quality_warn']} / {row['quality_error']})" in text
            means.append(q["mean_estimate"])
        assert by[("corrupt", m)]["quality_ok"] is None and by[("corrupt", m)]["quality"] != by[("corrupt", m)]["quality"]
        o = summary["overall"][m]
        assert o["quality"] == pytest.approx(sum(means) / 3)  # 10 frames each
        assert sum(o[f"quality_{k.lower()}"] for k in levels) == 30
    with open(out / "summary.csv", newline="") as f:
        header = f.readline().strip().split(",")
    assert {"quality", "quality_ok", "quality_warn", "quality_error"} <= set(header)


def test_a_worker_killed_mid_bag_is_retried_and_completes(bags, ray_local, tmp_path):
    killed: list[int] = []

    def kill(job, payload):
        if not killed and payload.get("frames", 0) >= 8:
            killed.append(int(payload["pid"]))
            os.kill(int(payload["pid"]), signal.SIGKILL)

    out = tmp_path / "killed"
    summary = run_fleet(_fleet([bags["long"]], out, methods=["tent"], workers=1), log=lambda m: None,
                        on_progress=kill)
    rec = json.loads((out / "records" / "tent" / "dusk.json").read_text())
    assert killed and rec["status"] == "ok", rec.get("reason")
    assert len(rec["workers"]) == 2 and str(killed[0]) in rec["workers"][0] and rec["pid"] != killed[0]
    assert rec["resumed_from_frame"] >= 5 and rec["frames"] == 60
    assert summary["rows"][0]["retried"]
    _same_as_replay(bags["long"], out, "tent", tmp_path)
    assert not (out / "bags" / "tent" / "dusk.resume").exists()


def test_an_interrupted_run_resumed_gives_the_uninterrupted_summary(fleet_run, bags, ray_local, tmp_path):
    _, whole = fleet_run
    out = tmp_path / "resumed"
    cfg = _fleet([bags[k] for k in ("night", "rain", "fog", "corrupt")], out)

    def stop(record):
        raise KeyboardInterrupt  # the driver goes down after its first record; the bags in flight are killed

    with pytest.raises(KeyboardInterrupt):
        run_fleet(cfg, log=lambda m: None, on_record=stop)
    done = list((out / "records").rglob("*.json"))
    assert len(done) == 1
    kept = sum(json.loads(p.read_text())["status"] == "ok" for p in done)  # a failed bag is tried again
    with pytest.raises(ValueError, match="pass --resume"):
        run_fleet(cfg, log=lambda m: None)
    cfg.resume = True
    resumed = run_fleet(cfg, log=lambda m: None)
    assert _comparable(resumed) == _comparable(whole)
    assert resumed["timing"]["runs"] == 8 - kept
    cfg.methods = ["tent"]
    with pytest.raises(ValueError, match="methods differ"):
        run_fleet(cfg, log=lambda m: None)


def test_without_ray_the_bags_run_one_after_another_saying_so_once(fleet_run, bags, tmp_path):
    out = tmp_path / "noray"
    code = f"""
import sys
class _NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("hidden for this test: " + name)
sys.meta_path.insert(0, _NoRay())
from tta_perception.fleet.run import FleetConfig, run_fleet
from tta_perception.fleet.cluster import ClusterSettings
from tta_perception.runtime.params import node_config
cfg = node_config({OVERRIDES!r})
s = run_fleet(FleetConfig(bags={[str(bags["night"]), str(bags["rain"])]!r}, out={str(out)!r}, cfg=cfg,
              methods=["tent"], replay={REPLAY!r}, cluster=ClusterSettings(workers=2), progress=False, plot=False))
assert "ray" not in sys.modules
print("engine", s["cluster"]["engine"])
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TEST_DIR), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Ray is not installed") == 1 and "engine in-process" in done.stdout
    ref_out, _ = fleet_run
    for name in ("night", "rain"):
        a = json.loads((out / "records" / "tent" / f"{name}.json").read_text())
        b = json.loads((ref_out / "records" / "tent" / f"{name}.json").read_text())
        assert a["status"] == "ok" and a["table"] == b["table"] and a["confusion"] == b["confusion"]
        assert a["quality"] == b["quality"] and a["quality"]["frames"] == 10  # the in-process records carry it too
        assert _messages(out / "bags" / "tent" / name) == _messages(ref_out / "bags" / "tent" / name)


def test_bench_cells_on_ray_give_the_single_machine_numbers(ray_local, tmp_path):
    """``bench --ray``: the cells (seeds x sequences x methods) as Ray tasks, the same numbers."""
    from tta_perception.bench.suite import BenchConfig, run_suite

    def bench(ray, out):
        cfg = BenchConfig(task="seg", methods=["source", "tent"], sequences=["day2night"], quick=True,
                          streaming=True, seeds=[0, 1], size=(32, 64), cache=str(tmp_path / "cache"), out=str(out),
                          plot=False, progress=False, ceiling=False, workers=1, device="cpu", ray=ray)
        with C.pinned_threads(1):
            return run_suite(cfg, log=lambda m: None)

    here, there = bench(None, tmp_path / "here"), bench("local", tmp_path / "ray")
    keys = ("method", "stream", "seed", "overall", "domains", "flicker_overall", "frames")
    assert to_jsonable([{k: r[k] for k in keys} for r in here["runs"]], None) == \
        to_jsonable([{k: r[k] for k in keys} for r in there["runs"]], None)
    assert len(here["runs"]) == 4
    rows = [json.dumps(to_jsonable(r["evidence"]["streams"]["day2night"]["rows"], None), sort_keys=True)
            for r in (here, there)]
    assert rows[0] == rows[1]
