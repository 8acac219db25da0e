"""docs/bring_your_own_network.md's segmentation walk-through, on the very code the page shows (read
from it, so page and test cannot drift), and the model contract the loader checks on every load."""
from __future__ import annotations

import functools
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tta_perception.cli.main import main
from tta_perception.models import registry
from tta_perception.models.base import contract_rules
from tta_perception.runtime.errors import ConfigError
from tta_perception.runtime.model_loader import load_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "bring_your_own_network.md"
FAST = ["--no-progress", "--device", "cpu", "--threads", "1"]


def doc_model_code() -> str:
    """The page's ```python block that starts with ``# my_unet.py``."""
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", DOC.read_text(), flags=re.S | re.M)
    found = [textwrap.dedent(code) for _, code in blocks if code.lstrip().startswith("# my_unet.py")]
    assert len(found) == 1, "docs/bring_your_own_network.md: expected one python block starting '# my_unet.py'"
    return found[0]


@pytest.fixture
def my_unet(tmp_path, monkeypatch):
    """The doc's ``my_unet.py`` installed as a user would (an entry point in the group
    ``tta_perception.architectures``: a dist-info folder on sys.path); yields its module."""
    site = tmp_path / "site"
    info = site / "my_unet-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-unet\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tta_perception.architectures]\nmy_unet = my_unet:build\n")
    (site / "my_unet.py").write_text(doc_model_code())
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "my_unet", raising=False)
    import my_unet as module
    yield module
    sys.modules.pop("my_unet", None)


def register(monkeypatch, name: str, builder) -> str:
    monkeypatch.setitem(registry._BUILDERS, name, builder)
    return name


def test_doc_model_is_about_forty_lines_and_follows_the_contract(my_unet):
    code = [line for line in doc_model_code().splitlines() if line.strip()]
    assert len(code) <= 45
    torch.manual_seed(0)
    model = my_unet.build()
    assert all(r.ok for r in contract_rules(model)), contract_rules(model)
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_segmentation_walkthrough(my_unet, tmp_path, monkeypatch, capsys):
    """Steps 2-6: check-model, train-source --arch my_unet (tiny budget), prepare on the checkpoint,
    and the node's pipeline predicting a frame with DPLOT and that bundle, the checkpoint alone
    naming the architecture."""
    from tta_perception import training
    from tta_perception.cli import evaluate
    from tta_perception.runtime import params as P
    from tta_perception.runtime.pipeline import Pipeline

    monkeypatch.chdir(tmp_path)
    assert main(["check-model", "--model", "my_unet"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "every rule holds" in out and "logits: (1, 12, 64, 128)" in out

    # the validation (200 frames) and held-out scores (300) are not this test's subject: seconds instead
    monkeypatch.setattr(training, "TrainConfig", functools.partial(training.TrainConfig, val_size=2))
    monkeypatch.setattr(evaluate, "heldout_clear_score", lambda model, task: {"miou": 0.0})
    assert main(["train-source", "--task", "seg", "--arch", "my_unet", "--train-size", "4", "--epochs", "1",
                 "--batch-size", "2", "--threads", "1"]) == 0
    ckpt = tmp_path / "runs" / "train" / "my_unet_clear.pt"
    assert ckpt.is_file() and "wrote runs/train/my_unet_clear.pt" in capsys.readouterr().out

    bundle = tmp_path / "my_unet_dplot.bundle"
    assert main(["prepare", "--task", "seg", "--model", "my_unet", "--weights", str(ckpt), "--samples", "2",
                 "--batch-size", "2", "--selection-steps", "1", "--warmup-samples", "2", "--size", "32x64",
                 "--out", str(bundle), "--cache", str(tmp_path / "cache"), *FAST]) == 0
    assert bundle.is_file() and "selected blocks" in capsys.readouterr().out

    cfg = P.defaults()
    cfg.update(model=str(ckpt), architecture="", method="dplot", bundle=str(bundle), device="cpu", window=1,
               adapt_every=1, input_size=[32, 64])
    pipe = Pipeline(cfg, background=False)
    try:
        assert type(pipe.model).__name__ == "MyUNet"
        frame = np.random.default_rng(0).integers(0, 256, (48, 96, 3), dtype=np.uint8)
        result = pipe.infer(frame)
        assert result.class_ids.shape == (48, 96) and not result.nonfinite
    finally:
        pipe.close()


def test_quarter_resolution_logits_are_refused_at_load(my_unet, monkeypatch, capsys):
    """The user's case: logits at 1/4 of the input passed prepare and the node and failed only in
    bench; now every loader refuses it, naming the architecture and the rule."""

    class Quarter(my_unet.MyUNet):
        def forward(self, x):
            return F.avg_pool2d(super().forward(x), 4)

    register(monkeypatch, "quarter_unet", lambda **kw: Quarter())
    with pytest.raises(ConfigError) as err:
        load_model(architecture="quarter_unet")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("parameter 'architecture' 'quarter_unet' breaks the model contract")
    assert "logits: (1, 12, 16, 32), expected (1, 12, 64, 128)" in msg
    assert main(["check-model", "--model", "quarter_unet"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.strip().startswith("FAIL  logits:") for line in lines)
    assert sum(line.strip().startswith("pass") for line in lines) == 6


def test_wrong_candidate_block_blames_the_architecture_and_lists_blocks(my_unet, monkeypatch, tmp_path):
    def build(**kw):
        model = my_unet.MyUNet()
        model.candidate_blocks = ("enc1", "encoder2")
        return model

    register(monkeypatch, "typo_unet", build)
    torch.save(my_unet.build().state_dict(), tmp_path / "w.pt")
    with pytest.raises(ConfigError) as err:
        load_model(str(tmp_path / "w.pt"), "typo_unet")  # the node's model + architecture
    msg = str(err.value)
    assert msg.startswith("parameter 'architecture' 'typo_unet'") and "parameter 'model'" not in msg
    assert "'encoder2' not module(s) of MyUNet (did you mean 'enc2'?)" in msg
    assert "block-like modules (holding BatchNorm): enc1, enc2, enc3, dec2, dec1, enc1.body" in msg
    assert "(+" in msg  # truncated


def test_the_probe_leaves_modes_and_batchnorm_statistics_alone(my_unet):
    torch.manual_seed(0)
    model = my_unet.build().train()
    model.enc2.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert all(r.ok for r in contract_rules(model))
    assert model.training and not model.enc2.training and model.enc2.body[1].training is False
    assert model.dec1.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_classifier_rules_name_the_failing_shape():
    from engine_fixtures import TinyCls

    class WrongHead(TinyCls):
        def classify(self, f):
            return super().classify(f)[:, :3]

    class Squeezed(TinyCls):
        def forward(self, x):
            return super().forward(x).squeeze(0)

    rules = {r.name: r for r in contract_rules(WrongHead(num_classes=5))}
    assert not rules["classify"].ok and "(1, 3), expected (1, 5)" in rules["classify"].detail
    rules = {r.name: r for r in contract_rules(Squeezed())}
    assert rules["classify"].ok and not rules["logits"].ok and "(5,), expected (1, 5)" in rules["logits"].detail


def test_train_source_accepts_registered_architectures_only(my_unet):
    from tta_perception.cli.train_source import resolve_arch

    assert resolve_arch("seg", "small") == ("driveseg", True)
    assert resolve_arch("cls", "lite0") == ("lite0_cls", True)
    assert resolve_arch("seg", "my_unet") == ("my_unet", False)  # an entry point, as the loader resolves it
    with pytest.raises(ValueError, match=r"--arch must be small, lite0 or a registered architecture \(.*my_unet"):
        resolve_arch("seg", "my_unte")
