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
    """Validate a 2-D, C-contiguous CPU matrix of ``dtype`` ('float32' or 'uint64').

    Returns ``x`` ready for the extension: a torch tensor is detached (kernels are not
    differentiable), a numpy array is returned as is.

    Raises:
        TypeError: ``x`` is not a numpy array or torch tensor, or has another dtype.
        ValueError: ``x`` is not 2-D, not C-contiguous, or not in CPU memory.
    """
    return check_array(x, fn=fn, arg=arg, dtypes=dtype, shape="[rows, columns]")


def check_array(
    x: Any,
    *,
    fn: str,
    arg: str,
    dtypes: str | tuple[str, ...],
    shape: str,
    writable: bool = False,
) -> Any:
    """Validate a C-contiguous CPU array whose dtype is one of ``dtypes`` (numpy names)
    and whose rank is that of ``shape``, a description such as ``"[B, C, H, W]"``.

    ``writable``: the kernel writes into ``x`` (a read-only numpy array is refused).
    Returns ``x`` as :func:`check_matrix` does.

    Raises:
        TypeError: ``x`` is not a numpy array or torch tensor, or has another dtype.
        ValueError: wrong rank, not C-contiguous, not in CPU memory, or read-only.
    """
    where = f"{fn}: {arg}"
    names = (dtypes,) if isinstance(dtypes, str) else dtypes
    expected = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    ndim = shape.count(",") + 1
    if isinstance(x, np.ndarray):
        if x.dtype not in [np.dtype(name) for name in names]:
            raise TypeError(
                f"{where} must have dtype {expected} (native byte order), got {x.dtype}; "
                f"convert with {arg}.astype(np.{names[0]})"
            )
        _check_rank(x.shape, ndim, shape, where)
        if not x.flags.c_contiguous:
            raise ValueError(
                f"{where} must be C-contiguous (row-major), got strides {x.strides}; "
                f"pass np.ascontiguousarray({arg})"
            )
        if writable and not x.flags.writeable:
            raise ValueError(f"{where} is read-only, but the result is written into it")
        return x
    if is_torch_tensor(x):
        import torch  # already loaded: x is a tensor

        if x.dtype not in [getattr(torch, name) for name in names]:
            raise TypeError(
                f"{where} must have dtype {' or '.join('torch.' + n for n in names)}, "
                f"got {x.dtype}; convert with {arg}.to(torch.{names[0]})"
            )
        if x.device.type != "cpu":
            raise ValueError(
                f"{where} must be a CPU tensor, got device {x.device}; move it with {arg}.cpu()"
            )
        _check_rank(tuple(x.shape), ndim, shape, where)
        if not x.is_contiguous():
            raise ValueError(
                f"{where} must be C-contiguous (row-major), got strides {tuple(x.stride())}; "
                f"pass {arg}.contiguous()"
            )
        return x.detach()
    raise TypeError(
        f"{where} must be a numpy.ndarray or a torch.Tensor, got {type(x).__name__}; "
        f"convert with np.asarray({arg}, dtype=np.{names[0]})"
    )


def _check_rank(actual: tuple[int, ...], ndim: int, shape: str, where: str) -> None:
    if len(actual) != ndim:
        raise ValueError(f"{where} must be {ndim}-D {shape}, got shape {tuple(actual)}")


def like_input(result: np.ndarray, x: Any) -> Any:
    """``result`` as the same kind of array as ``x``: a torch tensor sharing its memory
    when ``x`` is one, else the numpy array itself."""
    if is_torch_tensor(x):
        import torch

        return torch.from_numpy(result)
    return result


def as_int(value: Any, *, fn: str, arg: str, meaning: str) -> int:
    """``value`` as a Python int (any integer type, not bool), else a TypeError that
    says what ``arg`` means."""
    if isinstance(value, bool):
        raise TypeError(f"{fn}: {arg} must be an int ({meaning}), got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{fn}: {arg} must be an int ({meaning}), got {type(value).__name__}"
        ) from None
