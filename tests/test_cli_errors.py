"""One error path for the command line (issue 19): every expected failure is one line
``apb CMD: error: ...`` naming the file, exit status 2, and outputs are checked before
the work starts; anything else keeps its traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from apb import cli
from apb.cli import commands

LEGACY = Path(__file__).parent / "data" / "legacy-e22d813"


def run(argv, capsys) -> tuple[int, str, list[str]]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


@pytest.mark.parametrize("error, expected", [
    (MemoryError(), "out of memory processing"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                  "memory: you tried to allocate 48000000000 bytes."), "out of memory processing"),
    (OverflowError("Python int too large to convert to C long"), "a number out of range"),
    (FileExistsError(17, "File exists", "out/x.json"), "File exists: out/x.json"),
    (PermissionError(13, "Permission denied", "/root/x"), "Permission denied: /root/x"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "can't decode byte"),
])
def test_expected_failures_are_one_line_exit_2(monkeypatch, capsys, error, expected):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(commands, "summary", fail)
    code, out, err = run(["summary", LEGACY / "fp.pt"], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("apb summary: error: ") and expected in err[0]
    if "memory" in expected:
        assert "fp.pt" in err[0]  # names the input


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise RuntimeError("an invariant broke")

    monkeypatch.setattr(commands, "summary", fail)
    with pytest.raises(RuntimeError, match="invariant"):
        cli.main(["summary", str(LEGACY / "fp.pt")])


def test_outputs_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    """eval --json used to print its result, then fail on the write with a traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    called = []
    monkeypatch.setattr(commands, "evaluate_file", lambda *a, **k: called.append(1))
    code, out, err = run(["eval", LEGACY / "apb.safetensors", "--dataset", "digits", "--json",
                          blocker / "r.json"], capsys)
    assert code == 2 and not called and out == ""
    assert err == [f"apb eval: error: cannot write {blocker / 'r.json'}: {blocker} is a file, "
                   "not a directory"]


def test_plot_weights_returns_its_exit_status(tmp_path, capsys):
    code, out, err = run(["plot-weights", LEGACY / "apb.pt", "-o", tmp_path / "w.png"], capsys)
    assert code == 0 and (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"
    assert out.startswith("wrote ")
