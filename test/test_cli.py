"""The command line: every subcommand documents itself; user errors are one clear line."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tta_perception.cli.main import COMMANDS, build_parser, main


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert "usage: tta-perception " + name in capsys.readouterr().out


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "tta_perception.cli.main", "render", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--sequence" in out.stdout


def test_bad_sequence_is_one_clear_line(capsys):
    assert main(["render", "--sequence", "snowstorm", "--bench", "--frames", "2"]) == 2
    err = capsys.readouterr().err
    assert "unknown sequence 'snowstorm'" in err and "Traceback" not in err


def test_bad_size_is_rejected():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["render", "--size", "big"])


def test_render_writes_frames_and_overview(tmp_path, capsys):
    assert main(["render", "--sequence", "clear2fog", "--frames", "4", "--size", "32x64", "--workers", "1",
                 "--out", str(tmp_path)]) == 0
    assert len(list((tmp_path / "rgb").glob("*.png"))) == 4
    assert len(list((tmp_path / "labels").glob("*.png"))) == 4
    assert (tmp_path / "overview.png").exists()
    assert (tmp_path / "weather.csv").read_text().count("\n") == 5


def test_render_writes_what_the_docs_say(tmp_path):
    """docs/bring_your_own_network.md#training-data-what-render-writes: 8-bit class-id PNGs in the
    order of classes.json (255 unlabelled)."""
    import json

    import numpy as np
    from PIL import Image

    from tta_perception.world.classes import CLASS_NAMES, IGNORE_INDEX

    assert main(["render", "--sequence", "clear", "--seed", "1000", "--frames", "2", "--size", "32x64",
                 "--workers", "1", "--out", str(tmp_path), "--no-progress"]) == 0
    assert json.loads((tmp_path / "classes.json").read_text()) == list(CLASS_NAMES) and IGNORE_INDEX == 255
    label = Image.open(tmp_path / "labels" / "000000.png")
    values = set(np.unique(np.asarray(label)).tolist())
    assert label.mode == "L" and values <= set(range(len(CLASS_NAMES))) | {IGNORE_INDEX}
    assert np.asarray(Image.open(tmp_path / "rgb" / "000001.png")).shape == (32, 64, 3)


def test_render_says_when_frames_exceed_the_schedule(capsys):
    assert main(["render", "--sequence", "clear2fog", "--frames", "1600", "--stride", "600", "--size", "32x64",
                 "--workers", "1", "--bench", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == ("--frames 1600: clear2fog has 1200 frames and does not loop; rendering up to "
                                    "frame 1200")
    assert "rendered 2 frames" in captured.out
