"""atomic.py: what a power cut or a kill -9 during a save can leave, and what it cannot."""
import os
import subprocess
import sys

import pytest

from tta_perception.atomic import atomic_write, atomic_write_text, remove_orphans, temp_path


def test_the_file_and_then_its_directory_are_flushed_around_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    dest = tmp_path / "state.pt"
    atomic_write_text(dest, "new")
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".state.pt.")) and events[2][1] == str(tmp_path)
    assert dest.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_a_failing_writer_keeps_the_previous_content_and_no_temporary(tmp_path):
    dest = tmp_path / "state.pt"
    dest.write_text("old")

    def half(tmp):
        tmp.write_text("ha")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(dest, half)
    assert dest.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_only_the_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    orphan = tmp_path / f".adapted.pt.{dead_pid}-0.tmp"
    mine = temp_path(tmp_path / "adapted.pt")
    unrelated = tmp_path / ".adapted.pt.notapid.tmp"
    for f in (orphan, mine, unrelated, tmp_path / "adapted.pt"):
        f.write_bytes(b"x")
    assert remove_orphans(tmp_path) == [orphan]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, unrelated.name, "adapted.pt"])
    assert remove_orphans(tmp_path / "missing") == []
