"""Argument checks shared by the kernel wrappers.

Kernels take numpy arrays or CPU torch tensors and hand them to the extension as
zero-copy views, so an input must already have the layout the kernel reads: the
right dtype, the right rank, C-contiguous. Nothing is copied or converted silently;
a wrong input raises an exception that says what to call to fix it.
torch is never imported here: a tensor can only be passed once torch is loaded.
"""

from __future__ import annotations

import operator
import sys
from typing import Any

import numpy as np


def _torch_tensor_type() -> type | None:
    torch = sys.modules.get("torch")
    return None if torch is None else torch.Tensor


def is_torch_tensor(x: Any) -> bool:
    tensor_type = _torch_tensor_type()
    return tensor_type is not None and isinstance(x, tensor_type)


def check_matrix(x: Any, *, fn: str, arg: str, dtype: str) -> Any:
    """Validate a 2-D, C-contiguous CPU matrix of ``dtype`` (e.g. 'float32', 'uint64').

    Returns ``x`` ready for the extension: a torch tensor is detached (kernels are not
    differentiable), a numpy array is returned as is.

    Raises:
        TypeError: ``x`` is not a numpy array or torch tensor, or has another dtype.
        ValueError: ``x`` is not 2-D, not C-contiguous, or not in CPU memory.
    """
    return check_array(x, fn=fn, arg=arg, dtype=dtype, layout=("rows", "columns"))


def check_array(x: Any, *, fn: str, arg: str, dtype: str, layout: tuple[str, ...]) -> Any:
    """Validate a C-contiguous CPU array of ``dtype`` with one dimension per name in
    ``layout`` (e.g. ``("planes", "rows", "words")``); see :func:`check_matrix`."""
    where = f"{fn}: {arg}"
    if isinstance(x, np.ndarray):
        if x.dtype != np.dtype(dtype):
            raise TypeError(
                f"{where} must have dtype {dtype} (native byte order), got {x.dtype}; "
                f"convert with {arg}.astype(np.{dtype})"
            )
        _check_rank(x.shape, layout, where)
        if not x.flags.c_contiguous:
            raise ValueError(
                f"{where} must be C-contiguous (row-major), got strides {x.strides}; "
                f"pass np.ascontiguousarray({arg})"
            )
        return x
    if is_torch_tensor(x):
        import torch  # already loaded: x is a tensor

        expected = getattr(torch, dtype)
        if x.dtype != expected:
            raise TypeError(
                f"{where} must have dtype torch.{dtype}, got {x.dtype}; "
                f"convert with {arg}.to(torch.{dtype})"
            )
        if x.device.type != "cpu":
            raise ValueError(
                f"{where} must be a CPU tensor, got device {x.device}; move it with {arg}.cpu()"
            )
        _check_rank(tuple(x.shape), layout, where)
        if not x.is_contiguous():
            raise ValueError(
                f"{where} must be C-contiguous (row-major), got strides {tuple(x.stride())}; "
                f"pass {arg}.contiguous()"
            )
        return x.detach()
    raise TypeError(
        f"{where} must be a numpy.ndarray or a torch.Tensor, got {type(x).__name__}; "
        f"convert with np.asarray({arg}, dtype=np.{dtype})"
    )


def _check_rank(shape: tuple[int, ...], layout: tuple[str, ...], where: str) -> None:
    if len(shape) != len(layout):
        raise ValueError(
            f"{where} must be {len(layout)}-D [{', '.join(layout)}], got shape {tuple(shape)}"
        )


def like_input(result: np.ndarray, x: Any) -> Any:
    """``result`` as the same kind of array as ``x``: a torch tensor sharing its memory
    when ``x`` is one, else the numpy array itself."""
    if is_torch_tensor(x):
        import torch

        return torch.from_numpy(result)
    return result


def check_int(value: Any, *, fn: str, arg: str, what: str) -> int:
    """``value`` as a Python int (numpy integers accepted, bools not).

    Raises:
        TypeError: ``value`` is not an integer; the message says it should be ``what``.
    """
    if isinstance(value, bool):
        raise TypeError(f"{fn}: {arg} must be an int ({what}), got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{fn}: {arg} must be an int ({what}), got {type(value).__name__}"
        ) from None
