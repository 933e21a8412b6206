"""One packed layer as a packed file stores it, both ways (the tensors of docs/design.md
§4, listed in :mod:`apb.pack.format`): its metadata entry (:func:`layer_config`, checked by
:func:`validate_layer_config`), its tensors at their accounted sizes
(:func:`layer_tensors`, :func:`expected_tensors`), and the layer rebuilt from them
(:func:`build_layer`). Bit-planes are stored as dense little-endian bitstreams of the
weights in row-major order, without the padding of the in-memory rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..kernels import words_for
from ..memory import FP16_BITS, FP32_BITS, index_bits, sparse_storage
from .apb_layers import PackedAPBConv2d, PackedAPBLinear
from .bits import pack_bits, unpack_bits
from .csr import check_csr, csr_index_dtype, csr_indptr_dtype
from .dorefa_layers import PackedDoReFaConv2d, PackedDoReFaLinear
from .layer import ACT_BITS, PackedLayer
from .pruned_layers import PackedPrunedConv2d, PackedPrunedLinear

PACKED_TYPES = (PackedAPBConv2d, PackedAPBLinear, PackedDoReFaConv2d, PackedDoReFaLinear,
                PackedPrunedConv2d, PackedPrunedLinear)
"""Every packed layer class, each a ``kind`` of the file format."""
KINDS = {cls.kind: cls for cls in PACKED_TYPES}
METHODS = ("apb", "bnn", "dorefa", "prune_quant")
CONV_CLASSES = (PackedAPBConv2d, PackedDoReFaConv2d, PackedPrunedConv2d)
_UNSIGNED = {8: "uint8", 16: "uint16", 32: "uint32", 64: "uint64"}


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


def validate_layer_config(name: str, cfg: Any) -> None:
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
        nnz = integer("nnz", 0, rows * k)
        if cfg.get("alpha_count") not in (1, rows):
            raise ValueError(f"alpha_count must be 1 or {rows}, got {cfg.get('alpha_count')!r}")
        if cfg.get("value_bits") not in (FP32_BITS, FP16_BITS):
            raise ValueError(f"value_bits must be 32 or 16, got {cfg.get('value_bits')!r}")
        if cfg["method"] != "apb" and nnz:
            raise ValueError(f"a {cfg['method']} layer is binary: it has no full-precision "
                             f"weights, but the entry says nnz={nnz} (only method 'apb' has)")
        if cfg["method"] == "dorefa" and cfg["alpha_count"] != 1:
            raise ValueError("a 1-bit dorefa layer has one scale, but the entry says "
                             f"alpha_count={cfg['alpha_count']}")
    elif kind.startswith("pruned"):
        integer("weight_bits", 1, 8)
        integer("nnz", 0, rows * k)
    else:
        integer("weight_bits", 2, 8)


def load_bytes(cfg: dict[str, Any]) -> tuple[int, int]:
    """``(resident, transient)``: an upper bound on the bytes loading a (validated) layer
    entry allocates, what the built layer keeps (its bit-planes, their input-order copies
    and derived planes, CSR arrays, stored tensors) and what unpacking its tensors needs at
    once (the bits one byte each, padded, shifted)."""
    rows, k = cfg["rows"], cfg["K"]
    padded = rows * 64 * words_for(k)  # bits of one padded plane
    family = cfg["kind"].split("_")[0]
    q = 1 if family == "apb" else cfg["weight_bits"]
    nnz = cfg.get("nnz", 0)
    stored = sum(math.prod(shape) * np.dtype(dtype).itemsize
                 for shape, dtype in expected_tensors(cfg).values())
    resident = (2 + 5 * q) * padded // 8 + 24 * nnz + 16 * (rows + 1) + 2 * stored
    transient = 4 * (q + 1) * padded + 48 * nnz + 16 * (rows + 1)
    return resident, transient


def check_values(cfg: dict[str, Any], t: dict[str, np.ndarray]) -> None:
    """ValueError when a layer's stored floats are not what a writer produces: every float
    finite, ``alpha > 0`` (``≥ 0`` for binary methods, whose scale is the mean ``|w|``)."""
    for key, arr in t.items():
        if arr.dtype.kind == "f" and not bool(np.isfinite(arr).all()):
            raise ValueError(f"{key} holds NaN or Inf values")
    alpha = t.get("alpha")
    if alpha is not None:
        positive = cfg["method"] in ("apb", "prune_quant")
        bad = (alpha <= 0) if positive else (alpha < 0)
        if bool(bad.any()):
            raise ValueError(f"alpha holds {float(alpha[bad][0])}; a {cfg['method']} layer's "
                             f"scales are {'> 0' if positive else '>= 0'}")


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
    check_values(cfg, t)
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
