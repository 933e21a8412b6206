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
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..memory import FP16_BITS, FP32_BITS, index_bits, sparse_storage
from ..nn.layers import COMPRESSED_TYPES
from .layers import (
    ACT_BITS,
    PackedAPBConv2d,
    PackedAPBLinear,
    PackedDoReFaConv2d,
    PackedDoReFaLinear,
    PackedLayer,
    PackedPrunedConv2d,
    PackedPrunedLinear,
    check_csr,
    csr_index_dtype,
    csr_indptr_dtype,
)
from .reference import pack_bits, unpack_bits

FORMAT = "apb-packed"
FORMAT_VERSION = 1
HEADER_PREFIX_BYTES = 8

KINDS = {cls.kind: cls for cls in (PackedAPBConv2d, PackedAPBLinear, PackedDoReFaConv2d,
                                   PackedDoReFaLinear, PackedPrunedConv2d, PackedPrunedLinear)}
METHODS = ("apb", "bnn", "dorefa", "prune_quant")
CONV_CLASSES = (PackedAPBConv2d, PackedDoReFaConv2d, PackedPrunedConv2d)
_UNSIGNED = {8: "uint8", 16: "uint16", 32: "uint32", 64: "uint64"}


class PackedFormatError(ValueError):
    """A packed model file is missing, truncated, corrupt, not ours, or does not fit the
    architecture it names; the message says which and what was expected."""


@dataclass(frozen=True)
class PackedFileInfo:
    """Sizes of a packed file: ``model_bytes = file_bytes − header_bytes``."""

    file_bytes: int
    header_bytes: int  # the 8-byte length prefix + the JSON header (with its padding)

    @property
    def model_bytes(self) -> int:
        return self.file_bytes - self.header_bytes


# -- writing -------------------------------------------------------------------------------
def save_packed(model: nn.Module, path: str | os.PathLike, *,
                architecture: dict[str, Any] | None = None) -> PackedFileInfo:
    """Write a packed model (after :func:`apb.pack.pack_`) to ``path`` atomically.

    ``architecture`` is ``{"name": ..., "kwargs": {...}}`` for :func:`apb.models.create`;
    it defaults to what ``apb.models.create`` recorded on the model
    (``model.apb_architecture``). Returns the file's sizes.
    """
    from safetensors.numpy import save

    from ..io import atomic_write

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


def layer_config(layer: PackedLayer) -> dict[str, Any]:
    """The metadata entry of one packed layer."""
    cfg: dict[str, Any] = {
        "kind": layer.kind, "method": layer.method,
        "weight_shape": list(layer.weight_shape), "rows": layer.rows, "K": layer.cols,
        "act_bits": layer.act_bits, "bias": layer.bias is not None,
    }
    if isinstance(layer, CONV_CLASSES):
        cfg.update(kernel_size=list(layer.kernel_size), stride=list(layer.stride),
                   padding=list(layer.padding), dilation=list(layer.dilation))
    if isinstance(layer, (PackedAPBConv2d, PackedAPBLinear)):
        cfg.update(alpha_count=int(layer.alpha.shape[0]), nnz=layer.nnz,
                   value_bits=layer.value_bits)
    elif isinstance(layer, (PackedPrunedConv2d, PackedPrunedLinear)):
        cfg.update(weight_bits=layer.weight_bits, nnz=layer.nnz)
    else:
        cfg.update(weight_bits=layer.weight_bits)
    cfg["dtypes"] = {k: str(dtype) for k, (_, dtype) in expected_tensors(cfg).items()}
    return cfg


def layer_tensors(layer: PackedLayer) -> dict[str, np.ndarray]:
    """The file's tensors of one packed layer, at their accounted sizes."""
    out: dict[str, np.ndarray] = {}
    if isinstance(layer, (PackedAPBConv2d, PackedAPBLinear)):
        out["sign_bits"] = _dense_bitstream(unpack_bits(layer.sign_bits, layer.cols))
        out["alpha"] = layer.alpha.numpy().copy()
        if layer.nnz:
            nnz = layer.nnz
            out["csr_values"] = layer.csr_values.numpy().copy()
            out["csr_indices"] = _as_unsigned(layer.csr_indices, index_bits(layer.cols - 1))
            out["csr_indptr"] = _as_unsigned(layer.csr_indptr, index_bits(nnz))
    elif isinstance(layer, (PackedPrunedConv2d, PackedPrunedLinear)):
        out["alpha"] = layer.alpha.numpy().copy()
        out.update(_pruned_tensors(layer))
    else:
        out["weight_codes"] = _dense_bitstream(unpack_bits(layer.weight_planes, layer.cols))
    if layer.bias is not None:
        out["bias"] = layer.bias.numpy().copy()
    if layer.act_scale is not None:
        out["act_scale"] = layer.act_scale.numpy().copy()
    return out


def pruned_layout(rows: int, cols: int, nnz: int, bits: int) -> str:
    """``"csr"`` or ``"bitmap"``: where a pruned layer's file says its weights are (the
    smaller, as the accounting counts it)."""
    return sparse_storage(rows, cols, nnz, value_bits=bits, n_scalars=rows).format


def _pruned_tensors(layer) -> dict[str, np.ndarray]:
    return pruned_file_tensors(unpack_bits(layer.keep_bits, layer.cols).bool(),
                               unpack_bits(layer.code_planes, layer.cols))


def pruned_file_tensors(keep: torch.Tensor, codes: torch.Tensor) -> dict[str, np.ndarray]:
    """A pruned layer's weights as stored, from its mask (bool ``[M, K]``) and its code
    planes (0/1 ``[Q, M, K]``): the kept codes, and the bitmap or the CSR structure."""
    rows, cols = keep.shape
    nnz = int(keep.sum())
    if not nnz:
        return {}
    out = {"kept_codes": _dense_bitstream(codes[:, keep])}  # [Q, nnz], row-major order
    if pruned_layout(rows, cols, nnz, codes.shape[0]) == "bitmap":
        out["keep_bits"] = _dense_bitstream(keep)
    else:
        r, c = keep.nonzero(as_tuple=True)
        indptr = torch.zeros(rows + 1, dtype=torch.int64)
        indptr[1:] = torch.bincount(r, minlength=rows).cumsum(0)
        out["csr_indices"] = _as_unsigned(c, index_bits(cols - 1))
        out["csr_indptr"] = _as_unsigned(indptr, index_bits(nnz))
    return out


def _dense_bitstream(bits: torch.Tensor) -> np.ndarray:
    """0/1 values in row-major order → ``ceil(count/8)`` bytes, little-endian bit order."""
    return np.packbits(bits.reshape(-1).numpy().astype(np.uint8), bitorder="little")


def _as_unsigned(t: torch.Tensor, bits: int) -> np.ndarray:
    return t.to(torch.int64).numpy().astype(_UNSIGNED[bits])


def expected_tensors(cfg: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``name → (shape, dtype)`` of the tensors a (validated) layer config stores."""
    m, k = cfg["rows"], cfg["K"]
    n = m * k
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    if cfg["kind"].startswith("apb"):
        out["sign_bits"] = ((math.ceil(n / 8),), "uint8")
        out["alpha"] = ((cfg["alpha_count"],), "float32")
        nnz = cfg["nnz"]
        if nnz:
            out["csr_values"] = ((nnz,), "float32" if cfg["value_bits"] == FP32_BITS
                                 else "float16")
            out["csr_indices"] = ((nnz,), _UNSIGNED[index_bits(k - 1)])
            out["csr_indptr"] = ((m + 1,), _UNSIGNED[index_bits(nnz)])
    elif cfg["kind"].startswith("pruned"):
        nnz, bits = cfg["nnz"], cfg["weight_bits"]
        out["alpha"] = ((m,), "float32")
        if nnz:
            out["kept_codes"] = ((math.ceil(bits * nnz / 8),), "uint8")
            if pruned_layout(m, k, nnz, bits) == "bitmap":
                out["keep_bits"] = ((math.ceil(n / 8),), "uint8")
            else:
                out["csr_indices"] = ((nnz,), _UNSIGNED[index_bits(k - 1)])
                out["csr_indptr"] = ((m + 1,), _UNSIGNED[index_bits(nnz)])
    else:
        out["weight_codes"] = ((math.ceil(cfg["weight_bits"] * n / 8),), "uint8")
    if cfg["bias"]:
        out["bias"] = ((m,), "float32")
    if 2 <= cfg["act_bits"] <= 8:
        out["act_scale"] = ((1,), "float32")
    return out


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
    from .. import models

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
            f"({type(err).__name__}: {_first_line(err)})"
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
            raise PackedFormatError(f"{where}: layer {name!r}: {_first_line(err)}") from None
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
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name) if parent_name else net, child, layer)
    return net.eval()


def read_file(path: Path) -> bytes:
    if not path.exists():
        raise PackedFormatError(f"no packed model at {path}")
    if not path.is_file():
        raise PackedFormatError(f"{path} is not a file")
    try:
        return path.read_bytes()
    except OSError as err:
        raise PackedFormatError(f"cannot read {path}: {err}") from None


def header_length(data: bytes) -> int:
    return struct.unpack("<Q", data[:HEADER_PREFIX_BYTES])[0]


def packed_header(data: bytes, path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file that says it is an apb packed model."""
    not_ours = f"{path} is not an apb packed model (a safetensors file with apb metadata)"
    if len(data) < HEADER_PREFIX_BYTES:
        raise PackedFormatError(f"{not_ours}: it has only {len(data)} bytes")
    n = header_length(data)
    if n > len(data) - HEADER_PREFIX_BYTES:
        raise PackedFormatError(
            f"{not_ours}: its first 8 bytes announce a {n}-byte header, but the file has "
            f"{len(data)} bytes (truncated, or not safetensors)"
        )
    try:
        header = json.loads(data[HEADER_PREFIX_BYTES:HEADER_PREFIX_BYTES + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise PackedFormatError(f"{not_ours}: its header is not JSON ({_first_line(err)})") from None
    if not isinstance(header, dict):
        raise PackedFormatError(f"{not_ours}: its header is not a JSON object")
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or "format" not in metadata:
        raise PackedFormatError(f"{not_ours}: it carries no apb metadata")
    if metadata.get("format") != FORMAT:
        hint = ("; it is XOR-encoded: decode it with apb xor-decode (or apb.pack.xor.load_xor)"
                if metadata.get("format") == "apb-xor" else "")
        raise PackedFormatError(
            f"{not_ours}: its metadata says format {metadata.get('format')!r}, not "
            f"{FORMAT!r}{hint}"
        )
    version = metadata.get("format_version")
    if not isinstance(version, str) or not version.isdigit() or int(version) < 1:
        raise PackedFormatError(f"{path}: invalid format_version {version!r} (damaged file)")
    if int(version) > FORMAT_VERSION:
        raise PackedFormatError(
            f"{path} has packed format version {version}; this apb reads versions up to "
            f"{FORMAT_VERSION}: upgrade apb to read it"
        )
    return metadata


def file_arrays(data: bytes, path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return load(data)
    except Exception as err:  # SafetensorError and friends for damaged tensor tables
        raise PackedFormatError(
            f"{path}: its tensor table is damaged or truncated ({_first_line(err)})"
        ) from None


def parse_metadata(metadata: dict, path: Path) -> tuple[dict, dict[str, dict]]:
    """``(architecture, layer configs)`` of a packed file's metadata, every layer entry
    checked (PackedFormatError naming ``path`` and the layer)."""
    docs = {}
    for key in ("architecture", "layers"):
        text = metadata.get(key)
        if not isinstance(text, str):
            raise PackedFormatError(f"{path}: the metadata lacks its {key!r} entry")
        try:
            docs[key] = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise PackedFormatError(
                f"{path}: the metadata entry {key!r} is not JSON ({_first_line(err)})"
            ) from None
    arch, layers = docs["architecture"], docs["layers"]
    if (not isinstance(arch, dict) or not isinstance(arch.get("name"), str)
            or not isinstance(arch.get("kwargs"), dict)):
        raise PackedFormatError(f"{path}: architecture must be {{'name': str, 'kwargs': {{}}}}")
    if not isinstance(layers, dict) or not layers:
        raise PackedFormatError(f"{path}: 'layers' must be a non-empty JSON object")
    for name, cfg in layers.items():
        try:
            _validate_config(name, cfg)
        except ValueError as err:
            raise PackedFormatError(f"{path}: layer {name!r}: {err}") from None
    return arch, layers


def _validate_config(name: str, cfg: Any) -> None:
    """Types and ranges of one layer entry (ValueError saying which field is wrong)."""
    if not name or not isinstance(cfg, dict):
        raise ValueError("every layer needs a non-empty name and a JSON object")
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    if cfg.get("method") not in METHODS:
        raise ValueError(f"unknown method {cfg.get('method')!r}")
    if kind.startswith("dorefa") and cfg["method"] != "dorefa":
        raise ValueError(f"a {kind} layer must have method 'dorefa'")
    if kind.startswith("pruned") != (cfg["method"] == "prune_quant"):
        raise ValueError(f"a {kind} layer cannot have method {cfg['method']!r}")

    def integer(key: str, low: int, high: int | None = None) -> int:
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None
                                                                         and v > high):
            rng = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"{key} must be an integer {rng}, got {v!r}")
        return v

    def pair(key: str, low: int) -> None:
        v = cfg.get(key)
        if (not isinstance(v, list) or len(v) != 2
                or any(isinstance(e, bool) or not isinstance(e, int) or e < low for e in v)):
            raise ValueError(f"{key} must be two integers >= {low}, got {v!r}")

    rows, k = integer("rows", 1), integer("K", 1)
    shape = cfg.get("weight_shape")
    if (not isinstance(shape, list) or not shape
            or any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in shape)
            or shape[0] != rows or math.prod(shape[1:]) != k):
        raise ValueError(f"weight_shape {shape!r} does not match rows={rows}, K={k}")
    if cfg.get("act_bits") not in ACT_BITS:
        raise ValueError(f"act_bits must be one of {ACT_BITS}, got {cfg.get('act_bits')!r}")
    if not isinstance(cfg.get("bias"), bool):
        raise ValueError(f"bias must be true or false, got {cfg.get('bias')!r}")
    if kind.endswith("conv2d"):
        for key, low in (("kernel_size", 1), ("stride", 1), ("padding", 0), ("dilation", 1)):
            pair(key, low)
        if len(shape) != 4 or shape[2:] != cfg["kernel_size"]:
            raise ValueError(f"weight_shape {shape} does not match kernel_size "
                             f"{cfg['kernel_size']}")
    elif len(shape) != 2:
        raise ValueError(f"a linear layer's weight_shape has 2 entries, got {shape}")
    if kind.startswith("apb"):
        integer("nnz", 0, rows * k)
        if cfg.get("alpha_count") not in (1, rows):
            raise ValueError(f"alpha_count must be 1 or {rows}, got {cfg.get('alpha_count')!r}")
        if cfg.get("value_bits") not in (FP32_BITS, FP16_BITS):
            raise ValueError(f"value_bits must be 32 or 16, got {cfg.get('value_bits')!r}")
    elif kind.startswith("pruned"):
        integer("weight_bits", 1, 8)
        integer("nnz", 0, rows * k)
    else:
        integer("weight_bits", 2, 8)


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


def _bits_from_stream(stream: np.ndarray, planes: int, rows: int, cols: int) -> torch.Tensor:
    """Dense bitstream → padded uint64 rows ``[planes, rows, ceil(cols/64)]``; the stream's
    bits past ``planes·rows·cols`` must be 0."""
    bits = stream_bits(stream, planes * rows * cols)
    return pack_bits(torch.from_numpy(bits.reshape(planes, rows, cols)))


def stream_bits(stream: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` bits (uint8 0/1) of a dense little-endian bitstream whose bits
    past ``count`` must be 0 (ValueError otherwise)."""
    bits = np.unpackbits(stream, bitorder="little")
    if bits[count:].any():
        raise ValueError("nonzero padding bits after the last value of a bitstream")
    return bits[:count]


def build_layer(cfg: dict, t: dict[str, np.ndarray], backend: str | None = None) -> PackedLayer:
    """The packed layer of a (validated) metadata entry and its file tensors; ValueError
    when the tensors do not fit together."""
    cls = KINDS[cfg["kind"]]
    rows, k = cfg["rows"], cfg["K"]
    kwargs: dict[str, Any] = {"act_bits": cfg["act_bits"], "backend": backend}
    if "bias" in t:
        kwargs["bias"] = torch.from_numpy(t["bias"])
    if "act_scale" in t:
        kwargs["act_scale"] = torch.from_numpy(t["act_scale"])
    shape = cfg["weight_shape"]
    if cls in CONV_CLASSES:
        geometry = (shape[1], shape[0], tuple(cfg["kernel_size"]))
        kwargs.update(stride=tuple(cfg["stride"]), padding=tuple(cfg["padding"]),
                      dilation=tuple(cfg["dilation"]))
    else:
        geometry = (shape[1], shape[0])
    if cls in (PackedAPBConv2d, PackedAPBLinear):
        kwargs["sign_bits"] = _bits_from_stream(t["sign_bits"], 1, rows, k)[0]
        kwargs["alpha"] = torch.from_numpy(t["alpha"])
        kwargs["value_bits"] = cfg["value_bits"]
        kwargs["method"] = cfg["method"]
        if cfg["nnz"]:
            kwargs["csr"] = _csr_tensors(t, cfg["nnz"], k)
    elif cls in (PackedPrunedConv2d, PackedPrunedLinear):
        kwargs["alpha"] = torch.from_numpy(t["alpha"])
        kwargs["keep_bits"], kwargs["code_planes"] = pruned_planes(t, cfg)
    else:
        kwargs["weight_planes"] = _bits_from_stream(t["weight_codes"], cfg["weight_bits"],
                                                    rows, k)
    return cls(*geometry, **kwargs)


def pruned_planes(t: dict[str, np.ndarray], cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep_bits [M, W], code_planes [Q, M, W])`` of a pruned layer's stored tensors."""
    rows, k, nnz, bits = cfg["rows"], cfg["K"], cfg["nnz"], cfg["weight_bits"]
    keep = np.zeros(rows * k, dtype=np.uint8)
    if nnz and "keep_bits" in t:
        keep = stream_bits(t["keep_bits"], rows * k)
        if int(keep.sum()) != nnz:
            raise ValueError(f"keep_bits holds {int(keep.sum())} kept weights, the metadata "
                             f"says nnz={nnz}")
    elif nnz:
        indptr = torch.from_numpy(t["csr_indptr"].astype(np.int64))
        indices = torch.from_numpy(t["csr_indices"].astype(np.int64))
        check_csr(indptr, indices, k)
        r = torch.repeat_interleave(torch.arange(rows), indptr.diff())
        keep[(r * k + indices).numpy()] = 1
    codes = np.zeros((bits, rows * k), dtype=np.uint8)
    if nnz:
        codes[:, keep.astype(bool)] = stream_bits(t["kept_codes"], bits * nnz).reshape(bits, nnz)
    keep_t = torch.from_numpy(keep.reshape(rows, k))
    return pack_bits(keep_t), pack_bits(torch.from_numpy(codes.reshape(bits, rows, k)))


def _csr_tensors(t: dict[str, np.ndarray], nnz: int, cols: int) -> tuple:
    """``(indptr, indices, values)`` in the kernels' dtypes, the structure checked on the
    full-width values before they are narrowed (a wrapped value cannot pass)."""
    indptr = torch.from_numpy(t["csr_indptr"].astype(np.int64))
    indices = torch.from_numpy(t["csr_indices"].astype(np.int64))
    check_csr(indptr, indices, cols)
    return (indptr.to(csr_indptr_dtype(nnz)), indices.to(csr_index_dtype(cols)),
            torch.from_numpy(t["csr_values"]))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."
