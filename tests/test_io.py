"""Atomic writes: temporaries of interrupted writes are removed by the next write of the
same target (only those of dead processes), and a parent that is a file is one clear
error (issue 19)."""

from __future__ import annotations

import os
import subprocess

import pytest

from apb.io import atomic_write, atomic_write_text, remove_stale_temporaries


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".last.pt.{dead.pid}.k2j4h1x0.tmp"
    live = tmp_path / f".last.pt.{os.getpid()}.a8c7e6d5.tmp"  # a writer still running
    other = tmp_path / f".best.pt.{dead.pid}.b1b2b3b4.tmp"  # another target's
    unrelated = tmp_path / ".last.pt.notes"
    for p in (stale, live, other, unrelated):
        p.write_bytes(b"partial")
    atomic_write_text(tmp_path / "last.pt", "new")
    assert (tmp_path / "last.pt").read_text() == "new"
    assert not stale.exists() and live.exists() and other.exists() and unrelated.exists()
    assert remove_stale_temporaries(tmp_path / "best.pt") == [other]
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == sorted([live.name, unrelated.name, "last.pt"])


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(tmp_path / "x.bin", boom)
    assert list(tmp_path.iterdir()) == []


def test_a_parent_that_is_a_file_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"cannot write .*f/sub/x.json: .*f is a file"):
        atomic_write_text(tmp_path / "f" / "sub" / "x.json", "{}")
    atomic_write_text(tmp_path / "new" / "dir" / "x.json", "{}")  # missing parents: created
    assert (tmp_path / "new" / "dir" / "x.json").read_text() == "{}"
