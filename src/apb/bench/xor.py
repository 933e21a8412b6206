"""XOR-gate encryption benchmark: bits per weight, losslessness and decoding speed of random
pruned quantized weights, beside the formats a user would pick instead.

Weights: ``n`` random ``B``-bit codes (uniform bits per plane) with exactly
``round(P·n)`` of them pruned at random positions, encoded by :mod:`apb.pack.xor` with the
network shape it chooses (the XOR scheme, always). Reported, per weight:
``bits_per_weight`` = encrypted + patch bits (the figure Kim et al., CVPR 2020 quote: 0.28
for 1-bit, 91% pruned AlexNet FC layers), ``patch_bits_per_weight``,
``mask_bits_per_weight`` (the mask, a separate stream), ``total_bits_per_weight`` (all of
it), and for the same matrix CSR and bitmap (:mod:`apb.memory`; as the squarest
``rows × cols`` matrix of ``n`` entries, 1000 × 1000 for a million).

Speed, on one thread, median of ``repeats`` runs: ``encode_seconds`` (shape search and
encoding), and decoding every plane (network outputs and patches) into a preallocated
buffer, as decoded weight bits per second in GB (``B·n/8`` bytes per decode). Beside it,
in the same run: copying that many bytes (``memcpy``, the memory limit) and rebuilding the
planes from a bitmap and the kept codes with numpy (``bitmap scatter``, the irregular
decode XOR replaces).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from rich.table import Table

from .. import kernels
from ..console import table_text
from ..memory import bitmap_bits, csr_bits
from ..pack.xor import decode_plane, decode_planes, encode_mask, encode_planes

PAPER_BITS_PER_WEIGHT = 0.28  # Kim et al., CVPR 2020: 1-bit, 91% pruned, AlexNet FC


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: tables and buffers in cache, pages touched
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matrix_rows(weights: int) -> int:
    """Rows of the squarest matrix of ``weights`` entries (the CSR comparison needs one)."""
    rows = int(weights ** 0.5)
    while weights % rows:
        rows -= 1
    return rows


def random_pruned_planes(weights: int, prune: float, bits: int, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``(planes 0/1 [bits, weights], care bool [weights])``: uniform random codes with
    exactly ``round(prune·weights)`` pruned positions (codes 0 there)."""
    rng = np.random.default_rng(seed)
    care = np.ones(weights, dtype=bool)
    care[rng.permutation(weights)[:round(prune * weights)]] = False
    planes = rng.integers(0, 2, (bits, weights), dtype=np.uint8) * care
    return planes, care


def run_xor_benchmark(weights: int = 1_000_000, prune: float = 0.91, bits: int = 1, *,
                      seed: int = 0, repeats: int = 50) -> dict:
    """Encode, check and time one random layer (see the module docstring); JSON-ready."""
    if not isinstance(weights, int) or weights < 1:
        raise ValueError(f"--weights must be a positive integer, got {weights!r}")
    if not 0.0 <= prune < 1.0:
        raise ValueError(f"--prune must lie in [0, 1), got {prune}")
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"--bits must lie in 1..8, got {bits}")
    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {repeats}")
    planes, care = random_pruned_planes(weights, prune, bits, seed)
    kept = int(care.sum())
    rows = matrix_rows(weights)

    start = time.perf_counter()
    encoded = encode_planes(planes, care, scheme="xor")
    encode_seconds = time.perf_counter() - start
    mask = encode_mask(care)
    lossless = bool(np.array_equal(decode_planes(encoded)[:, care], planes[:, care]))

    out_bytes = -(-weights // 8)
    outs = [np.empty(out_bytes, dtype=np.uint8) for _ in range(bits)]
    _ = encoded.network.table  # built once per network (the decoder's wiring), not timed

    def decode():
        for q in range(bits):
            decode_plane(encoded, q, outs[q])

    source = np.empty(bits * out_bytes, dtype=np.uint8)
    target = np.empty_like(source)
    mask_bits = np.packbits(care, bitorder="little")
    values = planes[:, care]

    def scatter():
        where = np.unpackbits(mask_bits, bitorder="little")[:weights].astype(bool)
        dense = np.zeros((bits, weights), dtype=np.uint8)
        dense[:, where] = values
        return np.packbits(dense, axis=1, bitorder="little")

    threads = kernels.get_num_threads()
    kernels.set_num_threads(1)
    try:
        decode_s = _median_seconds(decode, repeats)
        copy_s = _median_seconds(lambda: np.copyto(target, source), repeats)
        scatter_s = _median_seconds(scatter, max(1, min(repeats, 10)))
    finally:
        kernels.set_num_threads(threads)
    decoded_gb = bits * weights / 8 / 1e9
    n = weights * bits
    return {
        "weights": weights, "prune": prune, "bits": bits, "seed": seed, "kept": kept,
        "n_in": encoded.network.n_in, "n_out": encoded.network.n_out,
        "patches": sum(encoded.n_patches), "mask_coding": mask.coding,
        "bits_per_weight": encoded.bits / weights,
        "encrypted_bits_per_weight": encoded.encrypted_bits / weights,
        "patch_bits_per_weight": encoded.patch_bits / weights,
        "mask_bits_per_weight": mask.bits / weights,
        "total_bits_per_weight": (encoded.bits + mask.bits) / weights,
        "matrix": [rows, weights // rows],
        "csr_bits_per_weight": sum(csr_bits(rows, weights // rows, kept, bits)) / weights,
        "bitmap_bits_per_weight": sum(bitmap_bits(rows, weights // rows, kept, bits)) / weights,
        "paper_bits_per_weight": PAPER_BITS_PER_WEIGHT if (bits, prune) == (1, 0.91) else None,
        "lossless": lossless,
        "encode_seconds": encode_seconds,
        "decode_seconds": decode_s,
        "decode_gbytes_per_s": decoded_gb / decode_s,
        "memcpy_gbytes_per_s": decoded_gb / copy_s,
        "bitmap_scatter_gbytes_per_s": decoded_gb / scatter_s,
        "decoded_bits": n,
        "threads": 1, "isa": kernels.active_isa(), "repeats": repeats,
    }


def report_table(r: dict) -> str:
    """The benchmark as a small table with the same-run comparisons."""
    t = Table(title=f"XOR-gate encryption: {r['weights']:,} weights, {r['bits']}-bit, "
                    f"{r['prune']:.0%} pruned, network {r['n_in']}x{r['n_out']}, "
                    f"isa {r['isa']}, 1 thread")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    paper = r.get("paper_bits_per_weight")
    rows = [
        ("bits/weight: encrypted + patches", f"{r['bits_per_weight']:.4f}"
         + (f" (paper {paper})" if paper else "")),
        ("  of which patches", f"{r['patch_bits_per_weight']:.4f} ({r['patches']:,} patches)"),
        (f"mask ({r['mask_coding']})", f"{r['mask_bits_per_weight']:.4f}"),
        ("total", f"{r['total_bits_per_weight']:.4f}"),
        ("same matrix as CSR", f"{r['csr_bits_per_weight']:.4f}"),
        ("same matrix as bitmap", f"{r['bitmap_bits_per_weight']:.4f}"),
        ("lossless", str(r["lossless"])),
        ("encode seconds", f"{r['encode_seconds']:.3f}"),
        ("decode GB/s (decoded bits)", f"{r['decode_gbytes_per_s']:.2f}"),
        ("memcpy GB/s, same bytes", f"{r['memcpy_gbytes_per_s']:.2f} (decode at "
         f"{r['decode_gbytes_per_s'] / r['memcpy_gbytes_per_s']:.2f}x)"),
        ("bitmap scatter GB/s (numpy)", f"{r['bitmap_scatter_gbytes_per_s']:.2f} (decode "
         f"{r['decode_gbytes_per_s'] / r['bitmap_scatter_gbytes_per_s']:.1f}x faster)"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return table_text(t)
