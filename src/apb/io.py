"""Atomic file writes: a file users keep is either the old one or the whole new one.

The temporary file is ``.<name>.<pid>.<random>.tmp`` beside the target. A process killed
while writing leaves its temporary behind; the next write of the same target removes the
temporaries of processes that no longer run (those of a live writer are left alone).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path``. On any error the temporary file is removed and ``path`` is untouched. Missing
    parent directories are created; a parent that is a file raises NotADirectoryError."""
    path = Path(path)
    _make_parents(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay out the matplotlib figure ``fig``, write it to ``path`` as PNG atomically
    (:func:`atomic_write`) and close it, written or not."""
    import matplotlib.pyplot as plt  # matplotlib only when a figure is written

    try:
        fig.tight_layout()
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries an interrupted :func:`atomic_write` of ``path`` left (their
    process is gone); returns what was removed."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp")
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of ours may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def existing_parent(path: str | os.PathLike) -> Path | None:
    """The nearest ancestor of ``path`` that exists (None if none does); raises
    NotADirectoryError, naming both, when it is a file, as nothing could be written below it."""
    path = Path(path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"cannot write {path}: {parent} is a file, not a "
                                         "directory")
            return parent
    return None


def _make_parents(path: Path) -> None:
    existing_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
