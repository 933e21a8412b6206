"""Per-epoch metrics as JSON lines: one object per line in ``out_dir/metrics.jsonl``.

Each record carries ``epoch`` (0-based), ``step``, ``lr``, ``scale_lr``, ``train_loss``,
``train_acc``, ``test_loss``, ``test_acc`` (accuracies are fractions in [0, 1]), the
method's ``stats`` (``bits_per_weight``, ``fp_fraction``: watch it for band collapse,
``model_bytes``), ``samples_per_rank``, ``events`` (freezes, ``finalize``) and ``seconds``.
Non-finite numbers are written as ``null`` so every line is standard JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, numbers as Python numbers and NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return str(value)


class MetricsLog:
    """Appends records to a JSON-lines file, flushing each so a crash loses at most one."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def reset(self, records: Iterable[dict[str, Any]] = ()) -> None:
        """Start the file over with ``records`` (a resumed run rewrites the epochs it keeps)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(jsonable(record)) + "\n" for record in records)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(jsonable(record)) + "\n")
            f.flush()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, in order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
