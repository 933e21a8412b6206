r"""XOR-gate encryption of one packed layer: which bits are planes, which of them matter.

Any packed layer (:class:`apb.pack.PackedLayer`) applies; what is encrypted is its bit-planes,
with the bits no decoder needs as don't-care:

* pruned + quantized (``pruned_*``, :class:`apb.pack.PackedPrunedConv2d`): the ``Q`` code
  planes, care = the kept weights. The mask is a separate stream (:mod:`.mask`), counted
  apart; decoding zeroes the pruned positions again.
* APB and binary (``apb_*``): the sign plane ``B``. At a full-precision position (in the
  CSR part ``S``, so its place costs nothing more) the weight is ``α·s + S`` and its sign
  bit is stored only for the file's sake. Where :math:`|S| \ge α` (precisely ``S ≥ α`` or
  ``S < −α``, i.e. :math:`|w| \ge 2α`) only one sign is consistent with ``S``
  (:math:`\mathrm{sign}(α s + S) = s` holds for ``s = sign(S)`` alone), so the decoder
  infers the bit from ``S`` and ``α`` and the encoder treats it as don't-care. The encoder
  checks that every inferred bit is the stored one; if one is not (a sign lost to
  rounding), the layer keeps all its bits as care bits. Other full-precision positions
  stay care bits: both signs are consistent there, the bit carries information.
* DoReFa (``dorefa_*``) and any dense layer (the output of filter pruning, which removes
  whole channels and leaves a smaller dense layer): every bit is a care bit, so XOR cannot
  beat storing the planes and ``scheme="auto"`` stores them plainly (:mod:`.planes`).

Decoding rebuilds the exact tensors of the packed file, checked against the sha256 of
the original layer's tensors, recorded at encoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ...memory import bitmap_bits, csr_bits
from ..bits import unpack_bits
from ..layer import PackedLayer
from ..layer_tensors import (
    build_layer,
    layer_config,
    layer_tensors,
    pruned_file_tensors,
    pruned_planes,
    stream_bits,
)
from .mask import MaskCode, decode_mask, encode_mask
from .network import DEFAULT_SEED
from .planes import EncodedPlanes, decode_planes, encode_planes

REPLACED = {"apb": ("sign_bits",), "dorefa": ("weight_codes",),
            "pruned": ("kept_codes", "keep_bits", "csr_indices", "csr_indptr")}


class XorFormatError(ValueError):
    """XOR-encoded weights are damaged, truncated, or do not match the network or the
    layer they claim; the message says which."""


def family(kind: str) -> str:
    """``"apb"``, ``"dorefa"`` or ``"pruned"``: how a packed kind stores its weights."""
    return kind.split("_")[0]


def tensor_digest(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors``, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class LayerPlanes:
    """A layer's bit-planes (0/1 uint8 ``[Q, n]``, row-major weights) and care mask."""

    planes: np.ndarray
    care: np.ndarray
    keep: np.ndarray | None  # pruned layers: the mask a decoder must be given
    inferred: np.ndarray | None  # APB: positions whose sign the decoder infers


def layer_planes(cfg: dict, tensors: dict[str, np.ndarray]) -> LayerPlanes:
    """The planes and care bits of a packed layer's metadata entry and file tensors."""
    n = cfg["rows"] * cfg["K"]
    kind = family(cfg["kind"])
    if kind == "dorefa":
        q = cfg["weight_bits"]
        planes = stream_bits(tensors["weight_codes"], q * n).reshape(q, n)
        return LayerPlanes(planes, np.ones(n, dtype=bool), None, None)
    if kind == "pruned":
        keep, codes = pruned_planes(tensors, cfg)
        keep = unpack_bits(keep, cfg["K"]).reshape(-1).numpy().astype(bool)
        planes = unpack_bits(codes, cfg["K"]).reshape(codes.shape[0], n).numpy()
        return LayerPlanes(np.ascontiguousarray(planes), keep, keep, None)
    signs = stream_bits(tensors["sign_bits"], n)[None]
    positions, inferred = inferable_signs(cfg, tensors)
    care = np.ones(n, dtype=bool)
    if positions.size and np.array_equal(signs[0, positions], inferred):
        care[positions] = False
    else:
        positions = None  # nothing inferable, or a sign rounding lost: every bit is care
    return LayerPlanes(signs, care, None, positions)


def inferable_signs(cfg: dict, tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, sign bits)`` of the full-precision positions of an APB layer whose sign
    is implied by ``S`` and ``α``: ``S ≥ α`` (bit 0, +α) or ``S < −α`` (bit 1, −α). Exact
    comparisons of the stored values, no arithmetic."""
    if not cfg.get("nnz"):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8)
    rows, k = cfg["rows"], cfg["K"]
    indptr = tensors["csr_indptr"].astype(np.int64)
    r = np.repeat(np.arange(rows), np.diff(indptr))
    values = tensors["csr_values"].astype(np.float64)
    alpha = tensors["alpha"].astype(np.float64)
    a = alpha[r] if alpha.shape[0] == rows else np.full(r.shape, alpha[0])
    determined = (values >= a) | (values < -a)
    positions = (r * k + tensors["csr_indices"].astype(np.int64))[determined]
    return positions, (values[determined] < 0).astype(np.uint8)


def file_tensors(cfg: dict, kept: dict[str, np.ndarray], planes: np.ndarray,
                 keep: np.ndarray | None, inferred: bool) -> dict[str, np.ndarray]:
    """The packed file's tensors of a layer, from the ones the encoding kept and the decoded
    planes (0/1 ``[Q, n]``, right at every care bit)."""
    out = dict(kept)
    kind = family(cfg["kind"])
    if kind == "dorefa":
        out["weight_codes"] = np.packbits(planes.reshape(-1), bitorder="little")
    elif kind == "pruned":
        rows, k = cfg["rows"], cfg["K"]
        keep_t = torch.from_numpy(keep.reshape(rows, k))
        codes = torch.from_numpy(planes.reshape(-1, rows, k)) * keep_t
        out.update(pruned_file_tensors(keep_t, codes))
    else:
        signs = planes[0].copy()
        if inferred:
            positions, bits = inferable_signs(cfg, kept)
            signs[positions] = bits
        out["sign_bits"] = np.packbits(signs, bitorder="little")
    return out


@dataclass(frozen=True)
class EncodedLayer:
    """One packed layer, XOR-encoded: its metadata entry, the tensors kept as they are,
    the encoded planes, the mask (pruned layers) and the checksum of the original."""

    config: dict
    kept: dict[str, np.ndarray]
    planes: EncodedPlanes
    mask: MaskCode | None
    inferred_signs: bool
    sha256: str

    @property
    def n_weights(self) -> int:
        return self.config["rows"] * self.config["K"]

    @property
    def mask_bits(self) -> int:
        return self.mask.bits if self.mask is not None else 0

    def bits(self) -> dict[str, int]:
        """Bits of the weight matrix: ``encrypted``, ``patches``, ``mask``, ``total``, and
        for comparison the same care bits as ``csr`` and as a ``bitmap``
        (:mod:`apb.memory`), and all ``dense`` planes."""
        rows, k = self.config["rows"], self.config["K"]
        q, care = self.planes.n_planes, self.planes.care_count
        out = {"encrypted": self.planes.encrypted_bits, "patches": self.planes.patch_bits,
               "mask": self.mask_bits}
        out["total"] = out["encrypted"] + out["patches"] + out["mask"]
        out["csr"] = sum(csr_bits(rows, k, care, q))
        out["bitmap"] = sum(bitmap_bits(rows, k, care, q))
        out["dense"] = q * rows * k
        return out


def encode_layer(layer: PackedLayer, *, seed: int = DEFAULT_SEED, n_in: int | None = None,
                 n_out: int | None = None, scheme: str = "auto") -> EncodedLayer:
    """XOR-encode any packed layer (APB / binary, DoReFa, pruned + quantized).

    ``seed``, ``n_in``, ``n_out``, ``scheme``: as :func:`apb.pack.xor.encode_planes`
    (default: the network shape with the fewest bits, XOR where it beats the dense planes).
    """
    if not isinstance(layer, PackedLayer):
        raise TypeError(f"encode_layer takes a packed layer (apb.pack.PackedLayer), got "
                        f"{type(layer).__name__}; pack the model with apb.pack_ first")
    return encode_layer_tensors(layer_config(layer), layer_tensors(layer), seed=seed,
                                n_in=n_in, n_out=n_out, scheme=scheme)


def encode_layer_tensors(cfg: dict, tensors: dict[str, np.ndarray], *,
                         seed: int = DEFAULT_SEED, n_in: int | None = None,
                         n_out: int | None = None, scheme: str = "auto") -> EncodedLayer:
    """:func:`encode_layer` of a layer's metadata entry and packed file tensors."""
    lp = layer_planes(cfg, tensors)
    encoded = encode_planes(lp.planes, lp.care, seed=seed, n_in=n_in, n_out=n_out,
                            scheme=scheme)
    kept = {k: v for k, v in tensors.items() if k not in REPLACED[family(cfg["kind"])]}
    mask = encode_mask(lp.keep) if lp.keep is not None else None
    return EncodedLayer(cfg, kept, encoded, mask, lp.inferred is not None,
                        tensor_digest(tensors))


def decoded_tensors(encoded: EncodedLayer, where: str = "layer") -> dict[str, np.ndarray]:
    """The packed file tensors of an encoded layer: planes decoded, mask decoded, don't-care
    bits restored, checked against the layer's recorded sha256 (XorFormatError when they
    differ, or when a stream is damaged)."""
    try:
        keep = None
        if encoded.mask is not None:
            keep = decode_mask(encoded.mask.describe(), dict(encoded.mask.streams))
        care = care_mask(encoded, keep) if encoded.planes.scheme == "plain" else None
        planes = decode_planes(encoded.planes, care)
        tensors = file_tensors(encoded.config, encoded.kept, planes, keep,
                               encoded.inferred_signs)
    except XorFormatError:
        raise
    except ValueError as err:
        raise XorFormatError(f"{where}: {_first_line(err)}") from None
    if tensor_digest(tensors) != encoded.sha256:
        raise XorFormatError(f"{where}: the decoded weights do not match the layer's recorded "
                             "checksum (damaged file, or another network than the encoder's)")
    return tensors


def decode_layer(encoded: EncodedLayer, *, backend: str | None = None) -> PackedLayer:
    """The packed layer :func:`encode_layer` encoded, exactly (checksum verified)."""
    return build_layer(encoded.config, decoded_tensors(encoded), backend)


def care_mask(encoded: EncodedLayer, keep: np.ndarray | None) -> np.ndarray:
    """The care bits a decoder knows before the planes: the mask (pruned), the
    non-inferable positions (APB), or every bit."""
    if keep is not None:
        return keep
    care = np.ones(encoded.n_weights, dtype=bool)
    if encoded.inferred_signs:
        positions, _ = inferable_signs(encoded.config, encoded.kept)
        care[positions] = False
    return care


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
