"""The packed model file: safetensors with JSON metadata, never a pickle.

A file holds exactly the bytes :func:`apb.summary` accounts for (docs/design.md §3), so that

    model_bytes = file size − (8 + header length) = apb.summary(trained_model).model_bytes

Tensors, per packed layer ``L`` (``n = M·K`` weights):

=====================  ============================================================
``L.sign_bits``        uint8 ``[ceil(n/8)]``: ``B`` as a dense bitstream, bit ``i``
                       (little-endian within each byte) = weight ``i`` of
                       ``W.reshape(M, K)`` in row-major order is negative
``L.alpha``            float32 ``[1]`` or ``[M]``
``L.csr_values``       float32 or float16 ``[nnz]`` (only when ``nnz > 0``)
``L.csr_indices``      column indices ``[nnz]``, the smallest unsigned type holding ``K − 1``
``L.csr_indptr``       row pointers ``[M + 1]``, the smallest unsigned type holding ``nnz``
``L.weight_codes``     DoReFa layers instead of the above: uint8 ``[ceil(Q·n/8)]``, the
                       ``Q`` bit-planes of the codes one after the other, each ``n`` bits
``L.kept_codes``       pruned layers (``nnz`` kept weights, ``Q``-bit codes) instead:
                       uint8 ``[ceil(Q·nnz/8)]``, the ``Q`` bit-planes of the kept weights'
                       codes (row-major order) one after the other, each ``nnz`` bits;
                       with ``L.alpha`` float32 ``[M]`` and where the weights are, as
                       :func:`apb.memory.sparse_storage` picks the smaller: either
``L.keep_bits``        uint8 ``[ceil(n/8)]``, the presence bitmap (bit 1 = kept), or
                       ``L.csr_indices`` / ``L.csr_indptr`` as above (no values)
``L.bias``             float32 ``[M]`` when the layer has one
``L.act_scale``        float32 ``[1]`` for ``k``-bit activations
=====================  ============================================================

and every parameter and floating-point buffer of the other modules (first and last layers,
BatchNorm) under its ``state_dict`` name, float32. Nothing else: no ``num_batches_tracked``,
no ``δ``, no masks.

Metadata (``__metadata__``, strings): ``format = "apb-packed"``, ``format_version``, and
JSON documents ``architecture`` (``{"name", "kwargs"}`` for :func:`apb.models.create`) and
``layers`` (per packed layer: kind, method, shapes, ``K``, activation bits, convolution
geometry, ``nnz`` and the dtype of every tensor). Loading builds the architecture from the
model registry (on the meta device, so a damaged header cannot allocate anything), puts
packed modules at the recorded positions and fills everything else from the file, after
checking every name, shape, dtype, value and CSR structure against the metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save
from torch import nn

from .. import models
from .._version import __version__
from ..io import atomic_write
from ..nn.layers import COMPRESSED_TYPES
from .header import (
    FORMAT,
    FORMAT_VERSION,
    HEADER_PREFIX_BYTES,
    PackedFileInfo,
    PackedFormatError,
    file_arrays,
    first_line,
    header_length,
    packed_header,
    parse_metadata,
    read_file,
)
from .layer import PackedLayer
from .layer_tensors import build_layer, expected_tensors, layer_config, layer_tensors


# -- writing -------------------------------------------------------------------------------
def save_packed(model: nn.Module, path: str | os.PathLike, *,
                architecture: dict[str, Any] | None = None) -> PackedFileInfo:
    """Write a packed model (after :func:`apb.pack.pack_`) to ``path`` atomically.

    ``architecture`` is ``{"name": ..., "kwargs": {...}}`` for :func:`apb.models.create`;
    it defaults to what ``apb.models.create`` recorded on the model
    (``model.apb_architecture``). Returns the file's sizes.
    """
    if getattr(model, "apb_folded", False):
        raise ValueError("this model has BatchNorms folded into its layers (fold_batchnorm_), "
                         "which the packed format does not describe; save it before folding")
    arch = _architecture_of(model, architecture)
    layers: dict[str, dict] = {}
    tensors: dict[str, np.ndarray] = {}
    for name, module in model.named_modules():
        if isinstance(module, COMPRESSED_TYPES):
            raise ValueError(
                f"layer {name!r} is still a training layer ({type(module).__name__}); "
                "call apb.pack_(model) before saving"
            )
        if isinstance(module, PackedLayer):
            if not name:
                raise ValueError("save_packed takes a model that contains packed layers, "
                                 "not a single packed layer")
            layers[name] = layer_config(module)
            tensors.update({f"{name}.{k}": v for k, v in layer_tensors(module).items()})
        else:  # packed layers have no submodules, so nothing here is inside one
            tensors.update(_plain_tensors(name, module))
    if not layers:
        raise ValueError("the model has no packed layers; call apb.pack_(model) first")
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "writer": f"apb {__version__}",
        "architecture": json.dumps(arch, separators=(",", ":")),
        "layers": json.dumps(layers, separators=(",", ":")),
    }
    data = save(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))
    return PackedFileInfo(len(data), HEADER_PREFIX_BYTES + header_length(data))


def _architecture_of(model: nn.Module, architecture: dict | None) -> dict:
    arch = architecture if architecture is not None else getattr(model, "apb_architecture", None)
    if arch is None:
        raise ValueError(
            "save_packed needs the model's architecture: build it with apb.models.create, or "
            "pass architecture={'name': <registry name>, 'kwargs': {...}}"
        )
    if (not isinstance(arch, dict) or not isinstance(arch.get("name"), str)
            or not isinstance(arch.get("kwargs", {}), dict)):
        raise ValueError(f"architecture must be {{'name': str, 'kwargs': dict}}, got {arch!r}")
    arch = {"name": arch["name"], "kwargs": dict(arch.get("kwargs", {}))}
    try:
        json.dumps(arch)
    except (TypeError, ValueError) as err:
        raise ValueError(f"architecture kwargs must be plain JSON values: {err}") from None
    return json.loads(json.dumps(arch))


def _plain_tensors(name: str, module: nn.Module) -> dict[str, np.ndarray]:
    """A plain module's parameters and floating-point buffers (what the accounting counts)."""
    out = {}
    for full, t in _stored_tensors(name, module):
        if t.dtype != torch.float32:
            raise ValueError(f"{full} is {t.dtype}; the packed format stores float32 tensors")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{full} holds NaN or Inf values; such a model cannot be saved")
        out[full] = t.detach().cpu().contiguous().numpy().copy()
    return out


def _stored_tensors(name: str, module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(state_dict name, tensor)`` of what a plain module stores: its own parameters and
    floating-point buffers (integer counters such as ``num_batches_tracked`` are not)."""
    prefix = f"{name}." if name else ""
    own = list(module.named_parameters(recurse=False)) + [
        (k, b) for k, b in module.named_buffers(recurse=False) if b.is_floating_point()
    ]
    return [(prefix + key, t) for key, t in own]


# -- reading -------------------------------------------------------------------------------
def read_packed_info(path: str | os.PathLike) -> PackedFileInfo:
    """Sizes of the packed file at ``path`` (its header is checked, its tensors are not)."""
    data = read_file(Path(path))
    packed_header(data, Path(path))
    return PackedFileInfo(len(data), HEADER_PREFIX_BYTES + header_length(data))


def load_packed(path: str | os.PathLike, *, backend: str | None = None) -> nn.Module:
    """The packed model saved at ``path``, in eval mode, on the CPU.

    The architecture comes from the model registry (``apb.models.create``) with the kwargs
    the file records; the packed layers and every other tensor come from the file. Raises
    :class:`PackedFormatError` when the file is missing, damaged, not an apb packed model,
    written by a newer format version, or inconsistent with its own metadata.
    """
    path = Path(path)
    return load_packed_bytes(read_file(path), where=str(path), backend=backend)


def load_packed_bytes(data: bytes, *, where: str = "packed model",
                      backend: str | None = None) -> nn.Module:
    """:func:`load_packed` of a packed file's bytes (``where`` names them in errors)."""
    path = Path(where)
    metadata = packed_header(data, path)
    arrays = file_arrays(data, path)
    arch, layer_cfgs = parse_metadata(metadata, path)
    try:
        with torch.device("meta"):
            net = models.create(arch["name"], **arch["kwargs"])
    except Exception as err:  # a damaged header can make any builder fail
        raise PackedFormatError(
            f"{where}: cannot build the architecture {arch['name']!r} it records "
            f"({type(err).__name__}: {first_line(err)})"
        ) from None
    used: set[str] = set()
    packed: dict[str, PackedLayer] = {}
    for name, cfg in layer_cfgs.items():
        _check_position(net, name, cfg, where)
        spec = expected_tensors(cfg)
        tensors = {key: _take(arrays, f"{name}.{key}", shape, dtype, used, where)
                   for key, (shape, dtype) in spec.items()}
        if {k: str(v) for k, (_, v) in spec.items()} != cfg.get("dtypes"):
            raise PackedFormatError(
                f"{where}: layer {name!r} records tensor dtypes {cfg.get('dtypes')!r}, but its "
                f"configuration stores {({k: v for k, (_, v) in spec.items()})!r}"
            )
        try:
            packed[name] = build_layer(cfg, tensors, backend)
        except (ValueError, TypeError, RuntimeError) as err:
            raise PackedFormatError(f"{where}: layer {name!r}: {first_line(err)}") from None
    plain: dict[str, torch.Tensor] = {}
    for name, module in net.named_modules():
        if name in packed or any(name.startswith(p + ".") for p in packed):
            continue
        for full, t in _stored_tensors(name, module):
            arr = _take(arrays, full, tuple(t.shape), "float32", used, where)
            if not np.isfinite(arr).all():
                raise PackedFormatError(f"{where}: tensor {full!r} holds NaN or Inf values")
            plain[full] = torch.from_numpy(arr)
    extra = sorted(set(arrays) - used)
    if extra:
        shown = ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else "")
        raise PackedFormatError(
            f"{where}: holds tensors the architecture has no place for: {shown}"
        )
    net.to_empty(device="cpu")
    with torch.no_grad():
        for full, value in plain.items():
            owner, _, key = full.rpartition(".")
            getattr(net.get_submodule(owner) if owner else net, key).copy_(value)
        for _, buf in net.named_buffers():
            if not buf.is_floating_point():
                buf.zero_()  # counters such as num_batches_tracked: not stored, unused in eval
    for name, layer in packed.items():
        net.set_submodule(name, layer)
    return net.eval()


def _check_position(net: nn.Module, name: str, cfg: dict, where: str) -> None:
    """The registry model must have a matching plain Conv2d / Linear at ``name``."""
    try:
        module = net.get_submodule(name)
    except AttributeError:
        raise PackedFormatError(
            f"{where}: packed layer {name!r} has no place in the architecture"
        ) from None
    conv = cfg["kind"].endswith("conv2d")
    expected = nn.Conv2d if conv else nn.Linear
    if type(module) is not expected:
        raise PackedFormatError(
            f"{where}: packed layer {name!r} is a {cfg['kind']}, but the architecture has a "
            f"{type(module).__name__} there"
        )
    mismatch = tuple(module.weight.shape) != tuple(cfg["weight_shape"]) or (
        (module.bias is not None) != cfg["bias"]
    )
    if conv:
        mismatch = mismatch or module.groups != 1 or module.padding_mode != "zeros" or any(
            list(getattr(module, key)) != cfg[key] for key in ("stride", "padding", "dilation")
        )
    if mismatch:
        raise PackedFormatError(
            f"{where}: packed layer {name!r} ({cfg['weight_shape']}, bias={cfg['bias']}) does "
            f"not match the architecture's {module}"
        )


def _take(arrays: dict[str, np.ndarray], name: str, shape: tuple, dtype: str, used: set[str],
          where: str) -> np.ndarray:
    arr = arrays.get(name)
    if arr is None:
        raise PackedFormatError(f"{where}: tensor {name!r} is missing")
    if str(arr.dtype) != dtype or tuple(arr.shape) != tuple(shape):
        raise PackedFormatError(
            f"{where}: tensor {name!r} is {arr.dtype}{list(arr.shape)}, expected "
            f"{dtype}{list(shape)}"
        )
    used.add(name)
    return np.ascontiguousarray(arr).copy()
