"""The XOR-encoded model file: a packed model (:mod:`apb.pack.format`) whose layers' bit-planes
are XOR-encrypted, as safetensors with JSON metadata, written atomically.

Tensors: every tensor of the packed file that is not a layer's planes, under its own name
(``L.alpha``, ``L.csr_values``, biases, BatchNorm, first and last layers, ...), and per
packed layer ``L``:

=========================  ===========================================================
``L.xor.inputs``           ``"xor"``: uint8 ``[Q, ceil(blocks·n_in/8)]``, each plane's
                           network inputs; ``"plain"``: uint8 ``[ceil(Q·care/8)]``, the
                           care bits of plane 0, then plane 1, ...
``L.xor.patch_counts``     ``"xor"``: uint8, each plane's unary patch counts (one per
                           block), plane after plane, each padded to whole bytes
``L.xor.patch_offsets``    ``"xor"``: uint8, each plane's patch offsets, likewise
``L.xor.mask.quotients``,  pruned layers: the keep mask, Rice-coded (:mod:`.mask`)
``L.xor.mask.remainders``
``L.xor.mask.bitmap``      ... or as a bitmap, whichever is smaller
=========================  ===========================================================

Metadata: ``format = "apb-xor"``, ``format_version``, ``packed_metadata`` (the packed
file's whole metadata, so decoding writes it back unchanged), ``layers`` (per layer: the
scheme, the planes, the network's seed, shape and fingerprint, the patch counts, the mask
and the sha256 of the packed layer's tensors), ``other_sha256`` (of everything else) and
``sha256`` (format version 2: over every other metadata entry and every stored tensor,
checked before anything is decoded, with the embedded packed metadata and the memory
budget of :mod:`apb.pack.limits`).
Decoding checks every name, shape and dtype, regenerates the network and compares its
fingerprint, checks every stream (lengths, padding, patch positions), and compares each
layer's rebuilt tensors with their sha256: a damaged file raises :class:`XorFormatError`,
it never yields other weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save
from torch import nn

from ..._version import __version__
from ...io import atomic_write
from ...kernels.xor_gate import n_blocks
from ..format import check_packed_bytes, load_packed_bytes, plan_load, skeleton_for
from ..header import (
    DIGEST_KEY,
    HEADER_PREFIX_BYTES,
    PackedFileInfo,
    PackedFormatError,
    check_format,
    check_version,
    content_digest,
    file_arrays,
    header_length,
    packed_header,
    parse_metadata,
    read_file,
    require_checksum,
    verify_digest,
)
from ..layer_tensors import expected_tensors
from ..limits import MAX_HEADER_BYTES, LoadLimitError, budget, check_header_length
from .codec import (
    REPLACED,
    EncodedLayer,
    XorFormatError,
    decoded_tensors,
    encode_layer_tensors,
    family,
    tensor_digest,
)
from .mask import MaskCode, stream_bytes
from .network import DEFAULT_SEED, XorNetwork
from .planes import SCHEMES, EncodedPlanes
from .report import XorLayerRow, XorReport, layer_row

FORMAT = "apb-xor"
FORMAT_VERSION = 2
"""2: the metadata's ``sha256`` covers every other metadata entry (the embedded packed
metadata included) and every stored tensor; 1: none, refused unless the caller trusts the
file (``allow_unverified=True``, or ``apb repack`` to convert it)."""


def _layer_meta(e: EncodedLayer) -> dict[str, Any]:
    p = e.planes
    meta: dict[str, Any] = {"scheme": p.scheme, "planes": p.n_planes, "n_bits": p.n_bits,
                            "care": p.care_count, "inferred_signs": e.inferred_signs,
                            "sha256": e.sha256,
                            "mask": e.mask.describe() if e.mask is not None else None}
    if p.scheme == "xor":
        meta.update(p.network.describe())
        meta["patches"] = list(p.n_patches)
    return meta


def _layer_arrays(e: EncodedLayer) -> dict[str, np.ndarray]:
    out = dict(e.kept)
    out["xor.inputs"] = e.planes.inputs
    if e.planes.scheme == "xor":
        out["xor.patch_counts"] = np.concatenate(e.planes.patch_counts)
        out["xor.patch_offsets"] = np.concatenate(e.planes.patch_offsets)
    if e.mask is not None:
        out.update({f"xor.mask.{k}": v for k, v in e.mask.streams})
    return out


def encode_bytes(data: bytes, *, where: str = "packed model", seed: int = DEFAULT_SEED,
                 scheme: str = "auto", progress: bool = False) -> tuple[bytes, XorReport]:
    """XOR-encode the bytes of a packed model file: ``(XOR file bytes, report)``."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    path = Path(where)
    metadata = packed_header(data, path)
    check_packed_bytes(data, where=where)  # the whole file checked, as loading would
    arrays = file_arrays(data, path)
    _, cfgs = parse_metadata(metadata, path)
    tensors: dict[str, np.ndarray] = {}
    layers: dict[str, dict] = {}
    rows: list[XorLayerRow] = []
    owned: set[str] = set()
    items = list(cfgs.items())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="xor-encode", unit="layer", leave=False)
    for name, cfg in items:
        own = {key: arrays[f"{name}.{key}"] for key in expected_tensors(cfg)}
        owned.update(f"{name}.{key}" for key in own)
        encoded = encode_layer_tensors(cfg, own, seed=seed, scheme=scheme)
        decoded_tensors(encoded, f"layer {name!r}")  # never write what does not decode
        layers[name] = _layer_meta(encoded)
        tensors.update({f"{name}.{k}": v for k, v in _layer_arrays(encoded).items()})
        rows.append(layer_row(name, cfg, encoded))
    other = {k: v for k, v in arrays.items() if k not in owned}
    tensors.update(other)
    out_meta = {
        "format": FORMAT, "format_version": str(FORMAT_VERSION), "writer": f"apb {__version__}",
        "packed_metadata": json.dumps(metadata, separators=(",", ":")),
        "layers": json.dumps(layers, separators=(",", ":")),
        "other_sha256": tensor_digest(other),
    }
    out_meta[DIGEST_KEY] = content_digest(out_meta, tensors)
    out = save(tensors, metadata=out_meta)
    report = XorReport(rows, _info(data), _info(out), seed)
    return out, report


def _info(data: bytes) -> PackedFileInfo:
    return PackedFileInfo(len(data), HEADER_PREFIX_BYTES + header_length(data))


def encode_file(src: str | os.PathLike, dst: str | os.PathLike, *, seed: int = DEFAULT_SEED,
                scheme: str = "auto", progress: bool = False) -> XorReport:
    """XOR-encode the packed model file ``src`` (from ``apb pack``) into ``dst``, atomically.

    ``scheme``: ``"auto"`` (XOR where it beats the dense planes, plain elsewhere),
    ``"xor"`` or ``"plain"``; ``seed``: the network's seed. Every layer is decoded again
    and checked before anything is written. Raises :class:`apb.pack.PackedFormatError`
    when ``src`` is not a valid packed model. A packed file without an architecture (saved
    from your own model) is encoded too: it is checked as far as it can be without the
    model (:func:`apb.pack.format.check_packed_bytes`), and :func:`load_xor` then takes the
    model to fill as ``model=``.
    """
    src, dst = Path(src), Path(dst)
    data = read_file(src)
    out, report = encode_bytes(data, where=str(src), seed=seed, scheme=scheme,
                               progress=progress)
    atomic_write(dst, lambda f: f.write(out))
    return report


# -- decoding ------------------------------------------------------------------------------
def decode_bytes(data: bytes, *, where: str = "XOR-encoded model", max_bytes: int | None = None,
                 model: nn.Module | None = None, allow_unverified: bool = False) -> bytes:
    """The packed model file an XOR-encoded file's bytes were made from.

    Before anything is decoded: a file without a checksum (format version 1) is refused
    unless ``allow_unverified`` (then decoded with an
    :class:`~apb.pack.header.UncheckedFileWarning`; its layers are still compared with their
    recorded digests), the embedded packed metadata is checked, the memory that decoding
    and loading need is compared with the budget (``max_bytes``, :mod:`apb.pack.limits`),
    the packed layers are placed in ``model`` or in the recorded architecture built on the
    meta device, and the file's sha256 is compared."""
    path = Path(where)
    metadata = _xor_header(data, path)
    version = int(metadata["format_version"])
    require_checksum(version, where, XorFormatError, "XOR-encoded", allow_unverified)
    packed_md = _json(metadata, "packed_metadata", where)
    if not isinstance(packed_md, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in packed_md.items()):
        raise XorFormatError(f"{where}: packed_metadata must map strings to strings")
    try:
        check_format(packed_md, f"{where} (its packed metadata)")
        arch, cfgs = parse_metadata(packed_md, path)
        decoded_bytes = sum(_stored_bytes(cfg) for cfg in cfgs.values()) + len(data)
        plan_load(arch, cfgs, where, len(data), max_bytes, extra=2 * decoded_bytes,
                  decoding=True)
        arrays = file_arrays(data, path)
    except PackedFormatError as err:
        raise XorFormatError(str(err)) from None
    if arch is not None or model is not None:  # the model's own errors: PackedFormatError
        skeleton_for(arch, cfgs, model, where)
    verify_digest(metadata, arrays, version, where, XorFormatError, what="XOR-encoded",
                  allow_unverified=allow_unverified)
    metas = _json(metadata, "layers", where)
    if not isinstance(metas, dict) or set(metas) != set(cfgs):
        raise XorFormatError(f"{where}: the XOR layers do not match the packed layers "
                             f"({sorted(metas) if isinstance(metas, dict) else metas!r} vs "
                             f"{sorted(cfgs)})")
    tensors: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for name, cfg in cfgs.items():
        label = f"{where}: layer {name!r}"
        encoded = _stored_layer(name, cfg, metas[name], arrays, used, label)
        tensors.update({f"{name}.{k}": v for k, v in decoded_tensors(encoded, label).items()})
    other = {k: v for k, v in arrays.items() if k not in used}
    if tensor_digest(other) != metadata.get("other_sha256"):
        raise XorFormatError(f"{where}: the tensors outside the packed layers do not match "
                             "their recorded checksum (damaged file)")
    tensors.update(other)
    return save(tensors, metadata=packed_md)


def _stored_bytes(cfg: dict) -> int:
    """Bytes of a layer's tensors in the packed file (what decoding it produces)."""
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize
               for shape, dtype in expected_tensors(cfg).values())


def decode_file(src: str | os.PathLike, dst: str | os.PathLike, *,
                max_bytes: int | None = None, allow_unverified: bool = False) -> PackedFileInfo:
    """Decode the XOR-encoded file ``src`` back into the packed model file ``dst`` (the
    packed model it was encoded from, tensor for tensor), atomically. ``max_bytes``: the
    memory budget, ``allow_unverified``: read a file of format version 1 (no checksum), as
    for :func:`apb.pack.load_packed`; its decoded packed file is of version 1 too."""
    src = Path(src)
    data = _read_xor(src)
    out = decode_bytes(data, where=str(src), max_bytes=max_bytes,
                       allow_unverified=allow_unverified)
    _check_decoded(out, str(src), len(data), max_bytes)
    atomic_write(dst, lambda f: f.write(out))
    return _info(out)


def load_xor(path: str | os.PathLike, *, model: nn.Module | None = None,
             backend: str | None = None, max_bytes: int | None = None,
             allow_unverified: bool = False) -> nn.Module:
    """The packed model an XOR-encoded file holds, decoded, in eval mode on the CPU.

    ``model``: the model to fill, as for :func:`apb.pack.load_packed` (needed when the
    packed file was saved from a model outside :mod:`apb.models`); ``max_bytes``: the memory
    budget, and ``allow_unverified``: read a file of format version 1 (no checksum, refused
    by default; ``apb repack`` converts it), as there."""
    path = Path(path)
    data = _read_xor(path)
    out = decode_bytes(data, where=str(path), max_bytes=max_bytes, model=model,
                       allow_unverified=allow_unverified)
    return load_packed_bytes(out, where=str(path), model=model, backend=backend,
                             max_bytes=_decoded_budget(len(data), max_bytes, len(out)),
                             covered=True)


def _decoded_budget(xor_bytes: int, max_bytes: int | None, decoded: int) -> int | None:
    """The packed load after decoding gets the XOR file's budget (its own relative one
    would grow with the decoded size)."""
    if max_bytes is not None:
        return max_bytes
    from_xor, _ = budget(xor_bytes)
    from_packed, _ = budget(decoded)
    return None if from_xor >= from_packed else from_xor


def _check_decoded(out: bytes, where: str, xor_bytes: int, max_bytes: int | None) -> None:
    check_packed_bytes(out, where=where, max_bytes=_decoded_budget(xor_bytes, max_bytes,
                                                                   len(out)),
                       covered=True)


def recorded_encoding(path: str | os.PathLike) -> tuple[int, str]:
    """``(seed, scheme)`` for :func:`encode_file` to encode the model of the XOR-encoded
    file at ``path`` again as it is stored: the networks' seed (:data:`DEFAULT_SEED` when no
    layer has one) and ``"xor"`` or ``"plain"`` when every layer is stored so, else
    ``"auto"``. The file's header is checked, not its tensors."""
    path = Path(path)
    metas = _json(_xor_header(_read_xor(path), path), "layers", str(path))
    metas = list(metas.values()) if isinstance(metas, dict) else []
    schemes = {m.get("scheme") for m in metas if isinstance(m, dict)}
    seeds = [m["seed"] for m in metas if isinstance(m, dict) and m.get("scheme") == "xor"
             and isinstance(m.get("seed"), int) and 0 <= m["seed"] < 2**63]
    scheme = schemes.pop() if len(schemes) == 1 and schemes <= set(SCHEMES) else "auto"
    return (seeds[0] if seeds else DEFAULT_SEED), scheme


def is_xor_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file whose metadata says ``format = "apb-xor"``."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES:
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return False
    return isinstance(header, dict) and isinstance(header.get("__metadata__"), dict) and (
        header["__metadata__"].get("format") == FORMAT)


def _read_xor(path: Path) -> bytes:
    try:
        return read_file(path)
    except PackedFormatError as err:
        raise XorFormatError(str(err).replace("packed model", "XOR-encoded model")) from None


def _xor_header(data: bytes, path: Path) -> dict[str, str]:
    not_ours = f"{path} is not an apb XOR-encoded model (apb xor-encode writes them)"
    try:
        n = header_length(data) if len(data) >= HEADER_PREFIX_BYTES else None
        if n is None or n > len(data) - HEADER_PREFIX_BYTES:
            raise ValueError("truncated")
        check_header_length(n)
        header = json.loads(data[HEADER_PREFIX_BYTES:HEADER_PREFIX_BYTES + n].decode("utf-8"))
    except LoadLimitError as err:
        raise XorFormatError(f"{path}: {err}") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise XorFormatError(f"{not_ours}: it is not a safetensors file") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        said = metadata.get("format") if isinstance(metadata, dict) else None
        hint = "; it is a packed model: encode it with apb xor-encode" if said == "apb-packed" \
            else ""
        raise XorFormatError(f"{not_ours}: its metadata says format {said!r}{hint}")
    check_version(metadata.get("format_version"), FORMAT_VERSION, "XOR", path, XorFormatError)
    return metadata


def _json(metadata: dict, key: str, where: str) -> Any:
    text = metadata.get(key)
    if not isinstance(text, str):
        raise XorFormatError(f"{where}: the metadata lacks its {key!r} entry")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise XorFormatError(f"{where}: the metadata entry {key!r} is not JSON ({err})") from None


def _integer(meta: dict, key: str, low: int, high: int, label: str) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise XorFormatError(f"{label}: {key} must be an integer in [{low}, {high}], got {v!r}")
    return v


def _take(arrays: dict, name: str, shape: tuple, used: set[str], label: str) -> np.ndarray:
    a = arrays.get(name)
    if a is None:
        raise XorFormatError(f"{label}: tensor {name!r} is missing (truncated file?)")
    if a.dtype != np.uint8 or tuple(a.shape) != tuple(shape):
        raise XorFormatError(f"{label}: tensor {name!r} is {a.dtype}{list(a.shape)}, expected "
                             f"uint8{list(shape)} (truncated or damaged)")
    used.add(name)
    return np.ascontiguousarray(a)


def _stored_layer(name: str, cfg: dict, meta: Any, arrays: dict, used: set[str],
                  label: str) -> EncodedLayer:
    """The :class:`EncodedLayer` a file stores for layer ``name``, every field checked."""
    if not isinstance(meta, dict):
        raise XorFormatError(f"{label}: its XOR entry must be a JSON object")
    n = cfg["rows"] * cfg["K"]
    kind = family(cfg["kind"])
    q_expected = 1 if kind == "apb" else cfg["weight_bits"]
    q = _integer(meta, "planes", q_expected, q_expected, label)
    _integer(meta, "n_bits", n, n, label)
    care = _integer(meta, "care", 0, n, label)
    scheme = meta.get("scheme")
    if scheme not in ("xor", "plain"):
        raise XorFormatError(f"{label}: scheme must be 'xor' or 'plain', got {scheme!r}")
    if not isinstance(meta.get("inferred_signs"), bool) or (
            meta["inferred_signs"] and kind != "apb"):
        raise XorFormatError(f"{label}: invalid inferred_signs {meta.get('inferred_signs')!r}")
    if not isinstance(meta.get("sha256"), str):
        raise XorFormatError(f"{label}: the layer's sha256 is missing")
    kept = {}
    for key, (shape, dtype) in expected_tensors(cfg).items():
        if key in REPLACED[kind]:
            continue
        a = arrays.get(f"{name}.{key}")
        if a is None or str(a.dtype) != dtype or tuple(a.shape) != tuple(shape):
            raise XorFormatError(f"{label}: tensor {name}.{key} must be {dtype}{list(shape)}")
        used.add(f"{name}.{key}")
        kept[key] = np.ascontiguousarray(a)
    mask = _stored_mask(name, kind, meta.get("mask"), n, care, arrays, used, label)
    prefix = f"{name}.xor."
    if scheme == "plain":
        inputs = _take(arrays, prefix + "inputs", (-(-q * care // 8),), used, label)
        planes = EncodedPlanes("plain", n, q, care, None, inputs)
    else:
        seed = _integer(meta, "seed", 0, 2**63 - 1, label)
        n_in = _integer(meta, "n_in", 1, 64, label)
        n_out = _integer(meta, "n_out", 8, 4096, label)
        try:
            network = XorNetwork(n_in, n_out, seed)
        except ValueError as err:
            raise XorFormatError(f"{label}: {err}") from None
        if meta.get("network") != network.fingerprint:
            raise XorFormatError(
                f"{label}: the network regenerated from seed {seed}, shape {n_in}x{n_out} is "
                f"not the one the file was encoded with (fingerprint "
                f"{str(meta.get('network'))[:12]} vs {network.fingerprint[:12]}); the seed or "
                "shape does not match the stored network"
            )
        patches = meta.get("patches")
        if not isinstance(patches, list) or len(patches) != q or any(
                isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= n
                for v in patches):
            raise XorFormatError(f"{label}: patches must be {q} counts in [0, {n}], got "
                                 f"{patches!r}")
        blocks = n_blocks(n, n_out)
        inputs = _take(arrays, prefix + "inputs", (q, -(-blocks * n_in // 8)), used, label)
        width = max(1, (n_out - 1).bit_length())
        count_sizes = [-(-(blocks + p) // 8) for p in patches]
        offset_sizes = [-(-(p * width) // 8) for p in patches]
        counts = _take(arrays, prefix + "patch_counts", (sum(count_sizes),), used, label)
        offsets = _take(arrays, prefix + "patch_offsets", (sum(offset_sizes),), used, label)
        planes = EncodedPlanes("xor", n, q, care, network, inputs,
                               tuple(np.split(counts, np.cumsum(count_sizes)[:-1])),
                               tuple(np.split(offsets, np.cumsum(offset_sizes)[:-1])),
                               tuple(patches))
    return EncodedLayer(cfg, kept, planes, mask, meta["inferred_signs"], meta["sha256"])


def _stored_mask(name: str, kind: str, desc: Any, n: int, care: int, arrays: dict,
                 used: set[str], label: str) -> MaskCode | None:
    if kind != "pruned":
        if desc is not None:
            raise XorFormatError(f"{label}: only pruned layers store a mask")
        return None
    if not isinstance(desc, dict) or desc.get("n") != n or desc.get("kept") != care:
        raise XorFormatError(f"{label}: the mask entry {desc!r} does not describe {care} kept "
                             f"of {n} weights")
    try:
        sizes = stream_bytes(desc)
    except (KeyError, TypeError) as err:
        raise XorFormatError(f"{label}: invalid mask entry {desc!r} ({err})") from None
    streams = tuple((key, _take(arrays, f"{name}.xor.mask.{key}", (size,), used, label))
                    for key, size in sizes.items())
    return MaskCode(desc.get("coding"), n, care, desc.get("k", 0), desc.get("quotient_bits", 0),
                    streams)
