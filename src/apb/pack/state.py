"""The plain part of a model's state: every tensor a packed file stores outside the packed
layers, and what :func:`apb.summary` counts for it (docs/design.md §3, §4).

Rules, shared by :func:`apb.pack.save_packed`, :func:`apb.pack.load_packed` and
:func:`apb.summary` so that the file and the accounting cannot disagree:

* **What is stored**: every parameter and every buffer of the modules outside packed (and
  compressed training) layers, persistent or not, under its dotted name
  (``encoder.norm.weight``: the ``state_dict`` name; a non-persistent buffer, which
  ``state_dict`` leaves out, under the name it would have). Non-persistent buffers are
  stored because the model computes with them (BERT's ``position_ids``, rotary
  frequencies, attention masks), and a skeleton built on the meta device has no values
  for them. The one exception is BatchNorm's ``num_batches_tracked``: a training counter
  that eval mode never reads, not stored, not counted, and 0 after loading.
* **In which dtype**: its own: float16/32/64 and the integer and bool types that
  safetensors holds; anything else (bfloat16, complex) is refused with the fix.
* **Shared tensors** (tied weights, a module registered under two names): stored once,
  under the first name in ``state_dict`` order; the other names are *aliases*, recorded in
  the file's ``tied`` metadata and counted zero times more.
* **Counted**: ``numel × element size`` of each stored tensor, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

COUNTER_BUFFERS = ("num_batches_tracked",)
"""BatchNorm buffers that are training counters: not stored, not counted."""

STORED_DTYPES = {
    torch.float32: "float32", torch.float16: "float16", torch.float64: "float64",
    torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8",
    torch.uint8: "uint8", torch.bool: "bool",
}
"""torch dtype → numpy dtype name of the plain tensors a packed file can hold."""


@dataclass(frozen=True)
class PlainTensor:
    """One distinct tensor of a model's plain state: its (first) name, the other names it is
    reachable under, and whether it is a parameter (else a buffer)."""

    name: str
    aliases: tuple[str, ...]
    tensor: torch.Tensor
    is_parameter: bool

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def nbytes(self) -> int:
        """What the file stores for it (contiguous, in its own dtype)."""
        return self.tensor.numel() * self.tensor.element_size()


def is_counter(module: nn.Module, key: str) -> bool:
    """Whether buffer ``key`` of ``module`` is a training counter (never stored)."""
    return key in COUNTER_BUFFERS and isinstance(module, nn.modules.batchnorm._NormBase)


def walk(model: nn.Module, stop: Callable[[nn.Module], bool]) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` for every module of ``model`` in ``state_dict`` order, every name
    under which a shared module is reachable included; the subtree of a module for which
    ``stop(module)`` is true is not entered (the module itself is yielded)."""
    stack = [("", model)]
    while stack:
        prefix, module = stack.pop()
        yield prefix, module
        if stop(module):
            continue
        children = [(f"{prefix}.{k}" if prefix else k, m)
                    for k, m in module._modules.items() if m is not None]
        stack.extend(reversed(children))


def plain_tensors(model: nn.Module, stop: Callable[[nn.Module], bool]) -> list[PlainTensor]:
    """The distinct tensors a packed file stores for ``model`` outside the modules for which
    ``stop`` is true (those and their subtrees are skipped), in ``state_dict`` order; see the
    module docstring for the rules."""
    found: dict[int, list] = {}  # id(tensor) → [names, tensor, is_parameter]
    for prefix, module in walk(model, stop):
        if stop(module):
            continue
        dot = f"{prefix}." if prefix else ""
        own = [(k, t, True) for k, t in module._parameters.items()] + [
            (k, t, False) for k, t in module._buffers.items() if not is_counter(module, k)]
        for key, t, is_param in own:
            if t is None:
                continue
            entry = found.setdefault(id(t), [[], t, is_param])
            entry[0].append(dot + key)
    return [PlainTensor(names[0], tuple(names[1:]), t, p) for names, t, p in found.values()]


def stored_dtype(t: torch.Tensor, name: str) -> str:
    """The numpy dtype name ``t`` is stored as (ValueError naming ``name`` otherwise)."""
    dtype = STORED_DTYPES.get(t.dtype)
    if dtype is None:
        raise ValueError(
            f"{name} is {t.dtype}, which a packed file does not store (it holds "
            f"{', '.join(STORED_DTYPES.values())}); convert it, e.g. with model.float()"
        )
    return dtype


def value_problem(values: np.ndarray | torch.Tensor, is_parameter: bool) -> str | None:
    """Why a plain tensor's values cannot be stored, or None: parameters must be finite;
    floating-point buffers must hold no NaN (±Inf is allowed: attention masks use it)."""
    t = torch.as_tensor(values)
    if not t.is_floating_point():
        return None
    if is_parameter and not bool(torch.isfinite(t).all()):
        return "holds NaN or Inf values"
    if bool(torch.isnan(t).any()):
        return "holds NaN values"
    return None


def as_array(t: torch.Tensor) -> np.ndarray:
    """A plain tensor as the file stores it: CPU, contiguous, its own dtype, a copy."""
    return t.detach().cpu().contiguous().numpy().copy()
