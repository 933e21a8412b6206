"""Filling a model the user built (a *skeleton*) from a packed file's tensors.

The skeleton is any ``nn.Module``, on the CPU or the meta device; the file says which of
its layers are packed and holds every other tensor (the rules of :mod:`apb.pack.state`).
:func:`fit` checks everything before it changes anything, so a file that does not fit
leaves the skeleton as it was:

* every packed layer's name is a plain ``nn.Conv2d`` / ``nn.Linear`` of the skeleton (or
  one of apb's compressed training layers, which :func:`apb.pack_` would replace) with the
  same weight shape (out/in features, channels, kernel size), bias, stride, padding,
  dilation, ``groups = 1`` and zero padding;
* the skeleton's other tensors and the file's are the same set of names, tied the same way
  (one tensor under several names), each with the skeleton's shape and dtype, parameters
  finite and floating-point buffers free of NaN.

Any mismatch is a :class:`PackedFormatError` naming the layer or tensor and both sides.
Then every plain tensor is replaced by a fresh CPU tensor holding the file's values (a
meta skeleton is materialised this way; ties are kept) and each packed layer is put in
place (``set_submodule``, under every name the skeleton's layer is reachable by).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..nn.layers import COMPRESSED_TYPES, QuantConv2d
from .header import PackedFormatError
from .layer import PackedLayer
from .state import PlainTensor, is_counter, plain_tensors, value_problem, walk


def check_position(model: nn.Module, name: str, cfg: dict, where: str) -> nn.Module:
    """The skeleton's layer at ``name``, after checking that the packed layer ``cfg``
    describes can take its place."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise PackedFormatError(
            f"{where}: packed layer {name!r} has no place in the model (it has no submodule "
            f"{name!r}); build the model the file was saved from"
        ) from None
    conv = cfg["kind"].endswith("conv2d")
    expected = nn.Conv2d if conv else nn.Linear
    if not (type(module) is expected or (isinstance(module, COMPRESSED_TYPES)
                                         and isinstance(module, QuantConv2d) == conv)):
        raise PackedFormatError(
            f"{where}: packed layer {name!r} is a {cfg['kind']} (weight {cfg['weight_shape']}),"
            f" but the model has a {type(module).__name__} there; it must be an "
            f"nn.{expected.__name__}"
        )
    diffs = []

    def differ(what: str, in_file, in_model) -> None:
        if in_file != in_model:
            diffs.append(f"{what} {in_file} in the file, {in_model} in the model")

    differ("weight shape", list(cfg["weight_shape"]), list(module.weight.shape))
    differ("bias", cfg["bias"], module.bias is not None)
    if conv:
        for key in ("stride", "padding", "dilation"):
            value = getattr(module, key)
            differ(key, cfg[key], list(value) if isinstance(value, tuple) else value)
        differ("groups", 1, module.groups)
        differ("padding_mode", "zeros", module.padding_mode)
    if diffs:
        raise PackedFormatError(
            f"{where}: packed layer {name!r} does not fit the model's "
            f"{type(module).__name__} at {name!r}: {'; '.join(diffs)}"
        )
    return module


def fit(model: nn.Module, packed: dict[str, PackedLayer], arrays: dict[str, np.ndarray],
        tied: dict[str, str], used: set[str], where: str) -> nn.Module:
    """Fill ``model`` from the file: ``packed`` holds the built packed layers by name (their
    positions checked with :func:`check_position`), ``arrays`` every tensor of the file,
    ``tied`` its ``{alias: stored name}`` entry, ``used`` the names the packed layers took.
    Returns ``model``, in eval mode, on the CPU. PackedFormatError before any change when
    the file does not fit (see the module docstring)."""
    replaced = {id(model.get_submodule(name)): name for name in packed}

    def stop(module: nn.Module) -> bool:
        return id(module) in replaced

    groups = {}  # every name of the file's plain tensors → the stored name it reads
    for name in arrays:
        if name not in used:
            groups[name] = name
    for alias, target in tied.items():
        if target not in groups:
            raise PackedFormatError(f"{where}: 'tied' makes {alias!r} the packed layers' "
                                    f"tensor {target!r}, which only a packed layer can hold")
    groups.update(tied)
    values: dict[int, torch.Tensor] = {}
    for entry in plain_tensors(model, stop):
        values[id(entry.tensor)] = _value(entry, arrays, groups, where)
        used.update(entry.names)
    _check_batchnorms(model, stop, values, where)
    extra = sorted(set(groups) - used)
    if extra:
        shown = ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else "")
        raise PackedFormatError(
            f"{where}: holds tensors the model has no place for: {shown} (build the model "
            "the file was saved from)"
        )
    # Nothing is changed before this point: a file that does not fit leaves the model as is.
    _install(model, values, stop)
    for name, module in list(walk(model, stop)):
        if id(module) in replaced and name:
            model.set_submodule(name, packed.get(name, packed[replaced[id(module)]]))
    return model.eval()


def _value(entry: PlainTensor, arrays: dict[str, np.ndarray], groups: dict[str, str],
           where: str) -> torch.Tensor:
    """The file's value for one of the skeleton's tensors, every check made."""
    stored = {}
    for name in entry.names:
        if name not in groups:
            kind = "parameter" if entry.is_parameter else "buffer"
            raise PackedFormatError(
                f"{where}: tensor {name!r} ({kind} {_describe(entry.tensor)} in the model) is "
                "missing from the file; build the model the file was saved from"
            )
        stored.setdefault(groups[name], name)
    if len(stored) > 1:
        (a, x), (b, y) = list(stored.items())[:2]
        raise PackedFormatError(
            f"{where}: the model ties {x!r} and {y!r} (one tensor), but the file stores them "
            f"as separate tensors ({a!r}, {b!r}); untie them in the model as in the saved one"
        )
    (source,) = stored
    in_file = {n for n, s in groups.items() if s == source}
    untied = sorted(in_file - set(entry.names))
    if untied:
        raise PackedFormatError(
            f"{where}: the file stores {untied[0]!r} as the same tensor as {source!r} (tied "
            f"when saved), but the model has a separate tensor there; tie them as in the "
            "saved model"
        )
    arr = arrays[source]
    t = entry.tensor
    if str(arr.dtype) != str(t.dtype).removeprefix("torch.") or tuple(arr.shape) != tuple(t.shape):
        raise PackedFormatError(
            f"{where}: tensor {source!r} is {arr.dtype}{list(arr.shape)} in the file, but the "
            f"model's is {_describe(t)}; build the model the file was saved from"
        )
    problem = value_problem(arr, entry.is_parameter)
    if problem:
        raise PackedFormatError(f"{where}: tensor {source!r} {problem}")
    return torch.from_numpy(np.ascontiguousarray(arr).copy())


def _check_batchnorms(model: nn.Module, stop, values: dict[int, torch.Tensor],
                      where: str) -> None:
    """A BatchNorm's running statistics must be finite, its variance ``>= 0`` (a negative
    one makes every output NaN): what training produces."""
    for name, module in walk(model, stop):
        if stop(module) or not isinstance(module, nn.modules.batchnorm._NormBase):
            continue
        for key in ("running_mean", "running_var"):
            t = module._buffers.get(key)
            v = values.get(id(t)) if t is not None else None
            if v is None or not v.is_floating_point():
                continue
            label = f"{name}.{key}" if name else key
            if not bool(torch.isfinite(v).all()):
                raise PackedFormatError(f"{where}: tensor {label!r} holds NaN or Inf values; "
                                        "BatchNorm statistics are finite")
            if key == "running_var" and bool((v < 0).any()):
                raise PackedFormatError(
                    f"{where}: tensor {label!r} holds the negative variance "
                    f"{float(v[v < 0][0])}; a variance is >= 0 (damaged file)")


def _describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"


def _install(model: nn.Module, values: dict[int, torch.Tensor], stop) -> None:
    """Replace every plain tensor by its value from the file, one new tensor per old one, so
    tied tensors stay tied; counters not stored become 0 where they have no value (meta)."""
    new: dict[int, torch.Tensor] = {}
    done: set[int] = set()
    for _, module in walk(model, stop):
        if stop(module) or id(module) in done:  # a shared module: its tensors are new now
            continue
        done.add(id(module))
        for key, t in module._parameters.items():
            if t is not None:
                if id(t) not in new:
                    new[id(t)] = nn.Parameter(values[id(t)], requires_grad=t.requires_grad)
                module._parameters[key] = new[id(t)]
        for key, t in module._buffers.items():
            if t is None:
                continue
            if id(t) not in new:
                if id(t) in values:
                    new[id(t)] = values[id(t)]
                elif is_counter(module, key):  # not stored, never read in eval
                    new[id(t)] = (torch.zeros_like(t, device="cpu") if t.is_meta
                                  else t.detach().cpu())
            module._buffers[key] = new[id(t)]
