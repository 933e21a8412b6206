r"""Bit-planes with don't-care bits, encoded by an XOR-gate network (or stored plainly).

Each plane of ``n`` bits is cut into blocks of ``n_out`` bits and each block stored as the
``n_in`` input bits that make the network (:class:`XorNetwork`) output every *care* bit
right; care bits no input can satisfy are fixed by patches. Kim et al., *Structured
Compression by Weight Encryption for Unstructured Pruning and Quantization*, CVPR 2020.

Cost (:func:`apb.memory.xor_bits`): ``n_in`` bits per block and plane (the fixed rate
``n_in/n_out`` bits per weight), plus per block its patch count in unary and per patch its
offset in the block.

Choosing the shape. A block with ``c`` care bits is a system of ``c`` random equations in
``n_in`` unknowns; taken in order, equation ``i`` is dependent on the earlier ones with
probability :math:`(2^r - 1)/(2^{n_{in}} - 1)` when they have rank ``r`` (rows are uniform
nonzero vectors), and a dependent equation needs a patch with probability ½ (its bit is
as likely right as wrong). :func:`expected_patches` runs that Markov chain over the rank,
so the expected bits of every ``(n_in, n_out)`` follow from the plane's own per-block care
counts; the best few candidates are then encoded for real and the smallest kept.

XOR or plain. The plain scheme stores the care bits as they are, in order: fewer bits
than XOR, always (``care`` bits, XOR a little more), but like every compact sparse format
it can only be decoded with the mask, serially, while XOR rebuilds every bit of the
plane at a fixed rate, block by block, in parallel: that regularity is what XOR buys.
``scheme="auto"`` therefore takes XOR whenever it beats storing the plane densely
(``n`` bits), and plain only where the don't-care bits are too few for that (dense
layers, APB's binary part with few inferable signs).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from ...kernels import direct, xor_gate_encode
from ...kernels.xor_gate import MAX_INPUTS, MAX_OUTPUTS, n_blocks, offset_bits
from ...memory import xor_bits
from .network import DEFAULT_SEED, XorNetwork

SCHEMES = ("auto", "xor", "plain")
CANDIDATE_INPUTS = tuple(range(8, MAX_INPUTS + 1, 8))
TRIALS = 3  # candidates encoded for real


@dataclass(frozen=True)
class EncodedPlanes:
    """``n_planes`` planes of ``n_bits`` bits sharing one care mask, encoded.

    ``scheme == "xor"``: ``inputs`` is uint8 ``[n_planes, ceil(n_blocks·n_in/8)]``, one
    input stream per plane, with each plane's patch streams in ``patch_counts`` /
    ``patch_offsets``. ``scheme == "plain"``: ``inputs`` is the care bits of plane 0, then
    of plane 1, ..., one uint8 stream; no network, no patches.
    """

    scheme: str
    n_bits: int
    n_planes: int
    care_count: int
    network: XorNetwork | None
    inputs: np.ndarray
    patch_counts: tuple[np.ndarray, ...] = ()
    patch_offsets: tuple[np.ndarray, ...] = ()
    n_patches: tuple[int, ...] = ()

    @property
    def encrypted_bits(self) -> int:
        if self.scheme == "plain":
            return self.n_planes * self.care_count
        return xor_bits(self.n_bits, self.n_planes, self.network.n_in, self.network.n_out,
                        sum(self.n_patches))[0]

    @property
    def patch_bits(self) -> int:
        if self.scheme == "plain":
            return 0
        return xor_bits(self.n_bits, self.n_planes, self.network.n_in, self.network.n_out,
                        sum(self.n_patches))[1]

    @property
    def bits(self) -> int:
        return self.encrypted_bits + self.patch_bits


def _as_planes(planes, care) -> tuple[np.ndarray, np.ndarray]:
    planes = np.asarray(planes)
    if planes.ndim == 1:
        planes = planes[None]
    if planes.ndim != 2 or planes.shape[0] < 1:
        raise ValueError(f"planes must be 0/1 values [n_planes, n_bits] (or [n_bits]), got "
                         f"shape {planes.shape}")
    if planes.dtype == bool:
        planes = planes.astype(np.uint8)
    if not np.issubdtype(planes.dtype, np.integer) or (planes.size and planes.max() > 1) or (
            planes.size and planes.min() < 0):
        raise ValueError("planes must hold 0/1 integers (or booleans)")
    care = np.asarray(care)
    if care.shape != (planes.shape[1],):
        raise ValueError(f"care must be one flag per bit, shape ({planes.shape[1]},), got "
                         f"{care.shape}")
    if care.dtype != bool:
        if not np.issubdtype(care.dtype, np.integer) or (care.size and (
                care.max() > 1 or care.min() < 0)):
            raise ValueError("care must hold booleans or 0/1 integers")
        care = care.astype(bool)
    return np.ascontiguousarray(planes, dtype=np.uint8), care


def _stream(bits01: np.ndarray) -> np.ndarray:
    return np.packbits(bits01, bitorder="little")


@cache
def expected_patches(n_in: int) -> np.ndarray:
    """``E[patches]`` of a block with ``c = 0..4096`` care bits under ``n_in`` inputs (see the
    module docstring), float64 ``[4097]``."""
    ranks = np.arange(n_in + 1, dtype=np.float64)
    dependent = (2.0 ** ranks - 1) / (2.0 ** n_in - 1)
    dist = np.zeros(n_in + 1)
    dist[0] = 1.0
    out = np.zeros(MAX_OUTPUTS + 1)
    total = 0.0
    for c in range(1, MAX_OUTPUTS + 1):
        stay = dist * dependent
        total += 0.5 * stay.sum()
        dist = stay + np.concatenate([[0.0], (dist - stay)[:-1]])
        out[c] = total
    return out


def candidate_shapes(care: np.ndarray, n_planes: int = 1) -> list[tuple[float, int, int]]:
    """``(expected bits, n_in, n_out)`` of every candidate network shape for planes with this
    care mask, smallest first: ``n_in`` in 8, 16, ..., 64 and ``n_out`` multiples of 8 up to
    where blocks hold about twice ``n_in`` care bits (or 4096)."""
    care = np.asarray(care, dtype=bool)
    n = care.shape[0]
    if n == 0:
        return [(0.0, 8, 8)]
    cumulative = np.concatenate([[0], np.cumsum(care, dtype=np.int64)])
    density = max(cumulative[-1] / n, 1.0 / MAX_OUTPUTS)
    out = []
    for n_in in CANDIDATE_INPUTS:
        table = expected_patches(n_in)
        top = min(MAX_OUTPUTS, max(n_in, int(2 * n_in / density)))
        for n_out in range(n_in, -(-top // 8) * 8 + 1, 8):
            starts = np.arange(0, n, n_out)
            counts = cumulative[np.minimum(starts + n_out, n)] - cumulative[starts]
            encrypted, patch = xor_bits(n, n_planes, n_in, n_out,
                                        n_planes * float(table[counts].sum()))
            out.append((encrypted + patch, n_in, n_out))
    out.sort()
    return out


def encode_planes(planes, care, *, seed: int = DEFAULT_SEED, n_in: int | None = None,
                  n_out: int | None = None, scheme: str = "auto") -> EncodedPlanes:
    """Encode 0/1 ``planes`` ``[n_planes, n_bits]`` (or one plane ``[n_bits]``) whose bits
    matter only where ``care`` ``[n_bits]`` is true.

    ``n_in`` / ``n_out``: the network shape (default: chosen for the fewest bits, see the
    module docstring); ``seed``: the network's seed. ``scheme``: ``"xor"``, ``"plain"``
    (the care bits as they are), or ``"auto"`` (XOR where it takes fewer bits than the
    dense planes, plain elsewhere).

    The decoded planes equal ``planes`` at every care position (:func:`decode_planes`).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    planes, care = _as_planes(planes, care)
    q, n = planes.shape
    care_count = int(care.sum())
    plain = EncodedPlanes("plain", n, q, care_count, None, _stream(planes[:, care].reshape(-1)))
    if scheme == "plain":
        return plain
    if (n_in is None) != (n_out is None):
        raise ValueError("give both n_in and n_out, or neither (to choose them)")
    if n_in is not None:
        shapes = [(n_in, n_out)]
    else:
        shapes = [(i, o) for _, i, o in candidate_shapes(care, q)[:TRIALS]]
    care_stream = _stream(care)
    best = None
    for i, o in shapes:
        encoded = _encode_xor(planes, care_stream, care_count, XorNetwork(i, o, seed))
        if best is None or encoded.bits < best.bits:
            best = encoded
    if scheme == "auto" and best.bits >= q * n:
        return plain
    return best


def _encode_xor(planes: np.ndarray, care_stream: np.ndarray, care_count: int,
                network: XorNetwork) -> EncodedPlanes:
    q, n = planes.shape
    inputs, counts, offsets, n_patches = [], [], [], []
    for plane in planes:
        x, flips, count = xor_gate_encode(network.rows, network.n_in, _stream(plane),
                                          care_stream, n)
        c, o = patch_streams(flips, n, network.n_out)
        inputs.append(x)
        counts.append(c)
        offsets.append(o)
        n_patches.append(count)
    return EncodedPlanes("xor", n, q, care_count, network, np.stack(inputs), tuple(counts),
                         tuple(offsets), tuple(n_patches))


def patch_streams(flips: np.ndarray, n_bits: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The two patch streams of a plane whose flips bitstream is ``flips``: per block its
    patch count in unary (that many 1s, then a 0), and per patch its offset in the block
    in :func:`apb.kernels.xor_gate.offset_bits` bits."""
    positions = np.flatnonzero(np.unpackbits(flips, bitorder="little")[:n_bits])
    blocks = n_blocks(n_bits, n_out)
    per_block = np.bincount(positions // n_out, minlength=blocks)
    unary = np.ones(blocks + positions.shape[0], dtype=np.uint8)
    unary[np.cumsum(per_block + 1) - 1] = 0
    width = offset_bits(n_out)
    fields = ((positions % n_out)[:, None] >> np.arange(width)) & 1
    return _stream(unary), _stream(fields.astype(np.uint8).reshape(-1))


def _network_for(encoded: EncodedPlanes, network: XorNetwork | None) -> XorNetwork:
    """The encoded planes' network; a given one must be the same (seed, shape, rows)."""
    if network is None:
        return encoded.network
    if not isinstance(network, XorNetwork):
        raise TypeError(f"network must be an XorNetwork, got {type(network).__name__}")
    if network.describe() != encoded.network.describe():
        mine, theirs = encoded.network, network
        raise ValueError(
            f"the network {theirs!r} does not match the one the planes were encoded with "
            f"({mine!r}, fingerprint {mine.fingerprint[:12]}); decode with that network"
        )
    return network


def decode_plane(encoded: EncodedPlanes, plane: int, out: np.ndarray | None = None, *,
                 network: XorNetwork | None = None) -> np.ndarray:
    """Plane ``plane`` of XOR-encoded planes as a bitstream (uint8 ``[ceil(n_bits/8)]``,
    bits past ``n_bits`` 0), decoded by the compiled kernel into ``out`` if given.
    ``network``, if given, must be the encoder's (ValueError otherwise)."""
    if encoded.scheme != "xor":
        raise ValueError("decode_plane decodes XOR-encoded planes; use decode_planes")
    if not 0 <= plane < encoded.n_planes:
        raise ValueError(f"plane must lie in [0, {encoded.n_planes}), got {plane}")
    net = _network_for(encoded, network)
    if out is None:
        out = np.empty(-(-encoded.n_bits // 8), dtype=np.uint8)
    # Without the wrapper's checks (they cost as much as decoding a 100k-weight plane): the
    # extension checks every array and stream itself before it writes ``out``.
    return direct.xor_gate_decode(net.table, net.n_out, net.n_in, encoded.inputs[plane],
                                  encoded.n_bits, encoded.patch_counts[plane],
                                  encoded.patch_offsets[plane], encoded.n_patches[plane], out)


def decode_planes(encoded: EncodedPlanes, care=None, *,
                  network: XorNetwork | None = None) -> np.ndarray:
    """The planes, 0/1 uint8 ``[n_planes, n_bits]``: right at every care position; elsewhere
    the network's outputs (``"xor"``) or 0 (``"plain"``, which needs ``care`` to know where
    its bits go). ``network``, if given, must be the encoder's (ValueError otherwise)."""
    n, q = encoded.n_bits, encoded.n_planes
    if encoded.scheme == "plain":
        if care is None:
            raise ValueError("plain planes need their care mask to be decoded")
        care = np.asarray(care, dtype=bool)
        if care.shape != (n,) or int(care.sum()) != encoded.care_count:
            raise ValueError(f"the care mask ({int(care.sum())} of {care.shape} bits) is not the "
                             f"one the planes were encoded with ({encoded.care_count} of {n})")
        stored = np.unpackbits(encoded.inputs, bitorder="little")
        if stored.shape[0] < q * encoded.care_count:
            raise ValueError("the plain bit stream is shorter than its care bits (truncated)")
        planes = np.zeros((q, n), dtype=np.uint8)
        planes[:, care] = stored[:q * encoded.care_count].reshape(q, -1)
        return planes
    net = _network_for(encoded, network)
    return np.stack([np.unpackbits(decode_plane(encoded, p, network=net), bitorder="little")[:n]
                     for p in range(q)])
