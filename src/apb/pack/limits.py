"""What a file may make apb allocate, decided before anything is (docs/design.md §4).

Loading a packed model, decoding an XOR-encoded one or reading a checkpoint runs in two
phases: first the header is read and every size it implies is computed and compared with
a *budget*, the architecture kwargs are checked against fixed limits and the model is built
on the meta device; only then is anything allocated. A small damaged or hostile file thus
cannot ask for gigabytes.

The budget of a load is ``max_bytes`` when the caller (``max_bytes=``) or the environment
(``APB_MAX_LOAD_BYTES``) sets one, else ``max(MIN_BUDGET, BUDGET_PER_FILE_BYTE × file
size)``: the memory a legitimate file needs grows with its size (a packed layer unpacks to
at most a few bytes per stored bit), a file that asks for far more is refused with a
message saying how to allow it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

MIN_BUDGET = 64 << 20
"""The smallest default budget: 64 MiB, whatever the file's size."""
BUDGET_PER_FILE_BYTE = 64
"""The default budget per byte of the file."""
MAX_BYTES_ENV = "APB_MAX_LOAD_BYTES"
"""Environment variable that sets the budget of every load in bytes (a plain integer)."""
MAX_HEADER_BYTES = 16 << 20
"""A safetensors header (its JSON) larger than this is refused before it is parsed."""

MAX_KWARGS_BYTES = 16 << 10
"""Architecture kwargs longer than this (as JSON) are refused."""
MAX_KWARGS_LIST = 256
"""No list in the architecture kwargs may have more entries (e.g. MLP hidden layers)."""
MAX_KWARGS_DEPTH = 4
"""Nesting of lists and objects allowed in the architecture kwargs."""
MAX_KWARGS_INT = 1 << 24
"""No integer in the architecture kwargs may exceed this in magnitude (widths, classes)."""


class LoadLimitError(ValueError):
    """A file implies more memory than its load may use, or architecture kwargs out of
    range; the message says what, the limit, and how to raise it."""


def budget(file_bytes: int, max_bytes: int | None = None) -> tuple[int, str]:
    """``(bytes, how it was set)``: the budget of loading a file of ``file_bytes`` bytes."""
    if max_bytes is None:
        text = os.environ.get(MAX_BYTES_ENV, "").strip()
        if text:
            if not text.isascii() or not text.isdigit() or int(text) < 1:
                raise LoadLimitError(f"{MAX_BYTES_ENV}={text!r} is not a positive number of "
                                     "bytes; set it to e.g. 2000000000")
            return int(text), f"{MAX_BYTES_ENV}={text}"
        relative = max(MIN_BUDGET, BUDGET_PER_FILE_BYTE * max(int(file_bytes), 0))
        return relative, (f"the default: {BUDGET_PER_FILE_BYTE} times the file's "
                          f"{file_bytes:,} bytes, at least {MIN_BUDGET >> 20} MiB")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int (bytes), got {max_bytes!r}")
    return max_bytes, f"max_bytes={max_bytes:,}"


def check_budget(need: int, what: str, file_bytes: int, max_bytes: int | None = None) -> None:
    """LoadLimitError when ``need`` bytes (for ``what``) exceed the budget of a file of
    ``file_bytes`` bytes."""
    limit, how = budget(file_bytes, max_bytes)
    if need > limit:
        raise LoadLimitError(
            f"{what} would need about {_size(need)} of memory, more than this load may use "
            f"({_size(limit)}, {how}); if the file is trusted, allow more with max_bytes= or "
            f"the environment variable {MAX_BYTES_ENV}"
        )


def check_header_length(n: int) -> None:
    if n > MAX_HEADER_BYTES:
        raise LoadLimitError(f"its header announces {n:,} bytes of JSON, more than the "
                             f"{MAX_HEADER_BYTES:,} a model file may have")


def check_kwargs(kwargs: Any, what: str = "architecture kwargs") -> None:
    """LoadLimitError unless ``kwargs`` are small plain JSON: at most
    :data:`MAX_KWARGS_BYTES` long, lists of at most :data:`MAX_KWARGS_LIST` entries,
    nested at most :data:`MAX_KWARGS_DEPTH` deep, integers at most :data:`MAX_KWARGS_INT`,
    floats finite. Checked before a model is built from them."""
    try:
        text = json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as err:
        raise LoadLimitError(f"{what} are not plain finite JSON values ({err})") from None
    if len(text) > MAX_KWARGS_BYTES:
        raise LoadLimitError(f"{what} are {len(text):,} bytes of JSON, more than the "
                             f"{MAX_KWARGS_BYTES:,} a model description may have")
    _check_value(kwargs, what, 0)


def _check_value(v: Any, where: str, depth: int) -> None:
    if depth > MAX_KWARGS_DEPTH:
        raise LoadLimitError(f"{where} nest deeper than {MAX_KWARGS_DEPTH} levels")
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return
    if isinstance(v, int):
        if abs(v) > MAX_KWARGS_INT:
            raise LoadLimitError(f"{where} hold the integer {v}, larger than the "
                                 f"{MAX_KWARGS_INT:,} a model dimension may be")
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise LoadLimitError(f"{where} hold the non-finite number {v}")
        return
    if isinstance(v, (list, tuple)):
        if len(v) > MAX_KWARGS_LIST:
            raise LoadLimitError(f"{where} hold a list of {len(v):,} entries, more than the "
                                 f"{MAX_KWARGS_LIST} a model description may have")
        for e in v:
            _check_value(e, where, depth + 1)
        return
    if isinstance(v, dict):
        for e in v.values():
            _check_value(e, where, depth + 1)
        return
    raise LoadLimitError(f"{where} hold a {type(v).__name__}, not a JSON value")


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):,.1f} {unit}"
    return f"{n:,} bytes"
