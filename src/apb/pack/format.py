"""The packed model file: safetensors with JSON metadata, never a pickle, for any model
whose compressed layers :func:`apb.pack_` packed (a model of :mod:`apb.models` or your own).

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

and every other tensor of the model (the rules of :mod:`apb.pack.state`): each parameter
and buffer outside the packed layers, persistent or not, under its ``state_dict`` name, in
its own dtype, a tensor shared under several names stored once. Nothing else: no
``num_batches_tracked``, no ``δ``, no masks.

Metadata (``__metadata__``, strings): ``format = "apb-packed"``, ``format_version``, the
JSON document ``layers`` (per packed layer: kind, method, shapes, ``K``, activation bits,
convolution geometry, ``nnz`` and the dtype of every tensor) and two optional ones:
``architecture`` (``{"name", "kwargs"}`` for :func:`apb.models.create`, written when the
model came from the registry) and ``tied`` (``{alias: stored name}``, written when some
tensor has several names), and ``sha256`` over all of it and every tensor
(:func:`apb.pack.header.content_digest`; format version 2). Nothing in the file is executed
or imported.

Loading fills a model: the one passed as ``model=`` (any architecture, built on the CPU or
the meta device), else the registry's ``architecture`` built on the meta device. Before
anything is allocated, the header's sizes and the architecture kwargs are checked against
the limits of :mod:`apb.pack.limits` (a damaged or hostile header cannot make the load
allocate more than its budget); then the checksum is compared, packed modules go to the
recorded positions and everything else is filled from the file, after checking every
name, shape, dtype, value and CSR structure against the metadata and the model
(:mod:`apb.pack.skeleton`).
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
    DIGEST_KEY,
    FORMAT,
    FORMAT_VERSION,
    HEADER_PREFIX_BYTES,
    PackedFileInfo,
    PackedFormatError,
    check_format,
    content_digest,
    file_arrays,
    first_line,
    header_length,
    packed_header,
    parse_metadata,
    parse_tied,
    read_file,
    require_checksum,
    verify_digest,
)
from .layer import PackedLayer
from .layer_tensors import (
    build_layer,
    check_values,
    expected_tensors,
    layer_config,
    layer_tensors,
    load_bytes,
)
from .limits import LoadLimitError, check_budget, check_kwargs
from .skeleton import check_position, fit
from .state import STORED_DTYPES, as_array, plain_tensors, stored_dtype, value_problem


# -- writing -------------------------------------------------------------------------------
def save_packed(model: nn.Module, path: str | os.PathLike, *,
                architecture: dict[str, Any] | None = None) -> PackedFileInfo:
    """Write a packed model (after :func:`apb.pack.pack_`) to ``path`` atomically; any
    ``nn.Module`` with packed layers. Returns the file's sizes, whose ``model_bytes`` is
    ``apb.summary(model).model_bytes``. The bytes are :func:`packed_bytes`'s.
    """
    data = packed_bytes(model, architecture=architecture)
    atomic_write(path, lambda f: f.write(data))
    return PackedFileInfo(len(data), HEADER_PREFIX_BYTES + header_length(data))


def packed_bytes(model: nn.Module, *, architecture: dict[str, Any] | None = None) -> bytes:
    """The packed file of ``model`` (after :func:`apb.pack.pack_`), as bytes, in the
    current format version, its ``sha256`` computed.

    Stored: each packed layer's tensors and every other parameter and buffer of the model
    (module docstring). ``architecture`` is ``{"name": ..., "kwargs": {...}}`` for
    :func:`apb.models.create`; it defaults to what ``apb.models.create`` recorded on the
    model (``model.apb_architecture``), and a file that has one loads without ``model=``.
    Without one, :func:`load_packed` needs the model to fill.

    Raises ValueError (nothing written) when a layer is still a training layer, the model
    has no packed layer or folded BatchNorms, or a tensor cannot be stored (its dtype, NaN,
    values on the meta device); the message names the tensor.
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
            if module.folded:
                raise ValueError(f"layer {name!r} has an affine map folded into it "
                                 "(fold_affine_), which the packed format does not describe; "
                                 "save it before folding")
            layers[name] = layer_config(module)
            own = layer_tensors(module)
            try:
                check_values(layers[name], own)
            except ValueError as err:
                raise ValueError(f"layer {name!r}: {err}; such a model cannot be saved") from None
            tensors.update({f"{name}.{k}": v for k, v in own.items()})
    if not layers:
        raise ValueError("the model has no packed layers; call apb.pack_(model) first")
    tied: dict[str, str] = {}
    for entry in plain_tensors(model, lambda m: isinstance(m, PackedLayer)):
        tensors[entry.name] = _plain_array(entry)
        tied.update({alias: entry.name for alias in entry.aliases})
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "writer": f"apb {__version__}"}
    if arch is not None:
        metadata["architecture"] = json.dumps(arch, separators=(",", ":"))
    metadata["layers"] = json.dumps(layers, separators=(",", ":"))
    if tied:
        metadata["tied"] = json.dumps(tied, separators=(",", ":"))
    metadata[DIGEST_KEY] = content_digest(metadata, tensors)
    return save(tensors, metadata=metadata)


def _architecture_of(model: nn.Module, architecture: dict | None) -> dict | None:
    arch = architecture if architecture is not None else getattr(model, "apb_architecture", None)
    if arch is None:
        return None
    if (not isinstance(arch, dict) or not isinstance(arch.get("name"), str)
            or not isinstance(arch.get("kwargs", {}), dict)):
        raise ValueError(f"architecture must be {{'name': str, 'kwargs': dict}}, got {arch!r}")
    arch = {"name": arch["name"], "kwargs": dict(arch.get("kwargs", {}))}
    try:
        json.dumps(arch)
    except (TypeError, ValueError) as err:
        raise ValueError(f"architecture kwargs must be plain JSON values: {err}") from None
    return json.loads(json.dumps(arch))


def _plain_array(entry) -> np.ndarray:
    t = entry.tensor
    stored_dtype(t, entry.name)
    if t.is_meta:
        raise ValueError(f"{entry.name} is on the meta device and has no values; load or "
                         "initialise it before saving")
    problem = value_problem(t.detach(), entry.is_parameter)
    if problem:
        raise ValueError(f"{entry.name} {problem}; such a model cannot be saved")
    return as_array(t)


# -- reading -------------------------------------------------------------------------------
def read_packed_info(path: str | os.PathLike) -> PackedFileInfo:
    """Sizes of the packed file at ``path`` (its header is checked, its tensors are not)."""
    data = read_file(Path(path))
    packed_header(data, Path(path))
    return PackedFileInfo(len(data), HEADER_PREFIX_BYTES + header_length(data))


def load_packed(path: str | os.PathLike, *, model: nn.Module | None = None,
                backend: str | None = None, max_bytes: int | None = None,
                allow_unverified: bool = False) -> nn.Module:
    """The packed model saved at ``path``, in eval mode, on the CPU.

    ``model``: the model to fill, built as it was before :func:`apb.compress_` or after
    (any architecture; on the meta device is fine: ``with torch.device("meta"): m =
    MyNet()``). Each packed layer of the file replaces the ``nn.Conv2d`` / ``nn.Linear`` of
    that name, every other tensor is loaded from the file (materialised on the CPU), and
    ``model`` itself is returned. Without ``model``, the file's recorded architecture is
    built from the model registry (``apb.models.create``); a file that records none asks
    for ``model=``.

    ``max_bytes``: the most memory the load may allocate (default: the ``APB_MAX_LOAD_BYTES``
    environment variable, else 64 times the file's size, at least 64 MiB; see
    :mod:`apb.pack.limits`). It is checked from the header, before anything is allocated.

    Raises :class:`PackedFormatError` when the file is missing, damaged (its sha256 does not
    match), not an apb packed model, written by a newer format version, inconsistent with
    its own metadata, would need more than ``max_bytes``, or does not fit ``model`` (a
    packed layer where the model has no matching Conv2d / Linear, a shape, a missing or
    unexpected tensor: the message names it and both shapes). The model is left unchanged
    then.

    ``allow_unverified``: a file of format version 1 (written before files carried a
    checksum) is refused with a message saying how to convert it (``apb repack IN OUT``),
    since nothing tells it from a checked file whose checksum was stripped; with True it
    loads, with an :class:`~apb.pack.header.UncheckedFileWarning`. Only for files you
    trust; saving the model again writes a checked file.
    """
    path = Path(path)
    return load_packed_bytes(read_file(path), where=str(path), model=model, backend=backend,
                             max_bytes=max_bytes, allow_unverified=allow_unverified)


def load_packed_bytes(data: bytes, *, where: str = "packed model", model: nn.Module | None = None,
                      backend: str | None = None, max_bytes: int | None = None,
                      allow_unverified: bool = False, covered: bool = False) -> nn.Module:
    """:func:`load_packed` of a packed file's bytes (``where`` names them in errors).
    ``covered``: the bytes were decoded from an XOR file whose own checks covered them
    (:func:`apb.pack.xor.load_xor`), so they need no checksum of their own."""
    path = Path(where)
    metadata = packed_header(data, path)
    version = check_format(metadata, path)
    require_checksum(version, where, PackedFormatError,
                     allow_unverified=allow_unverified or covered, warn=not covered)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module to fill, got {type(model).__name__}")
    arch, layer_cfgs = parse_metadata(metadata, path)
    plan_load(arch, layer_cfgs, where, len(data), max_bytes)  # before the tensors are read
    arrays = file_arrays(data, path)
    verify_digest(metadata, arrays, version, where, PackedFormatError,
                  allow_unverified=allow_unverified or covered)
    tied = parse_tied(metadata, path, set(arrays))
    net = skeleton_for(arch, layer_cfgs, model, where)
    used: set[str] = set()
    packed = _build_layers(arrays, layer_cfgs, used, where, backend)
    return fit(net, packed, arrays, tied, used, where)


def skeleton_for(arch: dict | None, layer_cfgs: dict[str, dict], model: nn.Module | None,
                 where: str) -> nn.Module:
    """``model``, or the registry's ``arch`` built on the meta device, after checking that
    every packed layer has its place in it (:func:`~apb.pack.skeleton.check_position`)."""
    net = model if model is not None else _registry_model(arch, where)
    for name, cfg in layer_cfgs.items():
        check_position(net, name, cfg, where)
    return net


def plan_load(arch: dict | None, layer_cfgs: dict[str, dict], where: str, file_bytes: int,
              max_bytes: int | None, extra: int = 0, decoding: bool = False) -> None:
    """The checks made before anything is allocated: the architecture's kwargs are within
    :mod:`apb.pack.limits`, and the memory the layers imply (``extra`` bytes more; twice
    the transient bytes when ``decoding`` an XOR file first) fits the budget of a file of
    ``file_bytes`` bytes. PackedFormatError naming ``where`` otherwise."""
    resident, transient = 0, 0
    for cfg in layer_cfgs.values():
        r, t = load_bytes(cfg)
        resident += r
        transient = max(transient, t)
    need = 3 * file_bytes + extra + resident + transient * (2 if decoding else 1)
    try:
        if arch is not None:
            check_kwargs(arch["kwargs"], f"the architecture kwargs of {arch['name']!r}")
        check_budget(need, f"loading its {len(layer_cfgs)} packed layers", file_bytes,
                     max_bytes)
    except LoadLimitError as err:
        raise PackedFormatError(f"{where}: {err}") from None


def check_packed_bytes(data: bytes, *, where: str = "packed model",
                       max_bytes: int | None = None, covered: bool = False) -> None:
    """Check a packed file's bytes as far as they can be without the model: with a recorded
    architecture, by loading it; without one, every packed layer is built from its tensors
    and every other tensor has a stored dtype, no NaN, and a consistent ``tied`` entry. A
    file without a checksum is refused unless ``covered`` (:func:`load_packed_bytes`)."""
    path = Path(where)
    metadata = packed_header(data, path)
    version = check_format(metadata, path)
    require_checksum(version, where, PackedFormatError, allow_unverified=covered, warn=False)
    arch, layer_cfgs = parse_metadata(metadata, path)
    if arch is not None:
        load_packed_bytes(data, where=where, max_bytes=max_bytes, covered=covered)
        return
    plan_load(arch, layer_cfgs, where, len(data), max_bytes)
    arrays = file_arrays(data, path)
    verify_digest(metadata, arrays, version, where, PackedFormatError,
                  allow_unverified=covered)
    tied = parse_tied(metadata, path, set(arrays))
    used: set[str] = set()
    _build_layers(arrays, layer_cfgs, used, where, None)
    for alias, target in tied.items():
        if target in used:
            raise PackedFormatError(f"{where}: 'tied' makes {alias!r} the packed layers' "
                                    f"tensor {target!r}, which only a packed layer can hold")
    dtypes = set(STORED_DTYPES.values())
    for name in sorted(set(arrays) - used):
        if str(arrays[name].dtype) not in dtypes:
            raise PackedFormatError(f"{where}: tensor {name!r} has dtype {arrays[name].dtype}, "
                                    "which a packed file does not store")
        problem = value_problem(arrays[name], is_parameter=False)
        if problem:
            raise PackedFormatError(f"{where}: tensor {name!r} {problem}")


def _registry_model(arch: dict | None, where: str) -> nn.Module:
    """The registry's model a file records, built on the meta device (its kwargs checked
    against :mod:`apb.pack.limits` first)."""
    if arch is None:
        raise PackedFormatError(
            f"{where} was saved from a model that apb.models does not build (it records no "
            "architecture): pass the model to fill, apb.pack.load_packed(path, "
            "model=MyNet()); it may be built on the meta device"
        )
    try:
        check_kwargs(arch["kwargs"], f"the architecture kwargs of {arch['name']!r}")
    except LoadLimitError as err:
        raise PackedFormatError(f"{where}: {err}") from None
    try:
        with torch.device("meta"):
            return models.create(arch["name"], **arch["kwargs"])
    except Exception as err:  # a damaged header can make any builder fail
        raise PackedFormatError(
            f"{where}: cannot build the architecture {arch['name']!r} it records "
            f"({type(err).__name__}: {first_line(err)})"
        ) from None


def _build_layers(arrays: dict[str, np.ndarray], layer_cfgs: dict[str, dict], used: set[str],
                  where: str, backend: str | None) -> dict[str, PackedLayer]:
    """Every packed layer of the file, built from its tensors (names added to ``used``)."""
    packed: dict[str, PackedLayer] = {}
    for name, cfg in layer_cfgs.items():
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
    return packed


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
