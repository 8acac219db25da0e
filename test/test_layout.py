"""The package's layout rules: ROS code only in ``ros/`` (and the commands in ``cli/``), a runtime
that imports without ROS, and one implementation per concept."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tta_perception"
ROS_MODULES = ("rclpy", "sensor_msgs", "std_msgs", "std_srvs", "diagnostic_msgs", "lifecycle_msgs",
               "rcl_interfaces", "vision_msgs", "builtin_interfaces")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        yield path, name, ast.parse(path.read_text(), str(path))


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of every import in the module, lazy (inside functions) ones included."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def test_nothing_outside_ros_and_cli_imports_the_ros_layer():
    offenders = []
    for path, name, tree in _modules():
        if name.startswith(("tta_perception.ros", "tta_perception.cli")):
            continue
        bad = sorted(i for i in _imports(tree, name, path.name == "__init__.py")
                     if i == "tta_perception.ros" or i.startswith("tta_perception.ros.")
                     or i.split(".")[0] in ROS_MODULES)
        if bad:
            offenders.append(f"{name}: {', '.join(bad)}")
    assert not offenders, "imports of ROS outside ros/ and cli/:\n" + "\n".join(offenders)


def test_runtime_imports_with_rclpy_absent():
    """The runtime, the metrics, the replay and the benchmarks work on a machine without ROS."""
    code = f"""
import sys
class _NoRos:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ROS_MODULES!r}:
            raise ImportError("hidden for this test: " + name)
sys.meta_path.insert(0, _NoRos())
import tta_perception.runtime
from tta_perception.runtime import (adapter, devices, errors, frames, health, image_codec, messages,
                                    model_loader, params, pipeline, postprocess, preprocess, session, state)
import tta_perception.metrics, tta_perception.bags.replay, tta_perception.bench.node, tta_perception.bench.gpu
import tta_perception.bench.suite
cfg = params.defaults()
cfg.update(method="tent", device="cpu")
pipe = pipeline.Pipeline(cfg, background=False)
import numpy as np
out = pipe.infer(np.zeros((64, 128, 3), np.uint8))
assert out.class_ids.shape == (64, 128)
pipe.close()
assert not any(m.split(".")[0] in {ROS_MODULES!r} for m in sys.modules), "a ROS module was imported"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def _definitions(name: str) -> list[str]:
    return [f"{mod}:{node.lineno}" for path, mod, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name]


def test_one_implementation_per_concept():
    for concept in ("load_model", "resolve_device", "nearest_resize", "frame_miou", "ConfusionMatrix",
                    "to_tensor", "ConfigError", "StreamScorer", "atomic_write", "palette_for",
                    "adapter_options", "percentile"):
        defs = _definitions(concept)
        assert len(defs) == 1, f"{concept} is defined {len(defs)} times: {defs}"


def test_no_module_imports_one_that_imports_it_back():
    """Imports only point down: no cycle between modules, lazy imports inside functions included
    (package ``__init__`` re-exports aside). The real-time clock lives in ``bench/clock.py`` so the
    stream runner does not import the report side that imports it."""
    modules = {name: (path, tree) for path, name, tree in _modules()}
    plain = {n for n, (p, _) in modules.items() if p.name != "__init__.py"}
    graph = {n: {d for d in _imports(modules[n][1], n, False) if d in plain and d != n} for n in plain}
    cycles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(trail[trail.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = "done"

    for name in sorted(plain):
        if name not in state:
            visit(name, [name])
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)
