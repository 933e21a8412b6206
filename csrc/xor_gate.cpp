// XOR-gate encryption: the GF(2) solver, the decode table, stream validation, dispatch
// and threading. Compiled without ISA flags.
#include "xor_gate.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "threads.h"

namespace apb {

namespace {

using xor_detail::load_bytes;
using xor_detail::read_field;

using BlocksFn = void (*)(const XorDecodeJob &);

BlocksFn blocks_fn_for(Isa isa) {
    switch (isa) {
#if defined(APB_HAVE_X86_KERNELS)
        // The table lookups are loads and XORs of 32-byte rows: AVX-512 machines run the
        // AVX2 code (wider rows would need a table twice as large).
        case Isa::avx512:
        case Isa::avx2: return xor_gate_decode_blocks_avx2;
#endif
        default: return xor_gate_decode_blocks_scalar;
    }
}

inline int parity(uint64_t v) { return __builtin_parityll(v); }

// One block: solve rows[i] . x = bits[i] over its care bits i in [s, e), in order.
// Returns x; sets the flip bit of every care bit whose equation is inconsistent with
// the earlier ones (it is then whatever the network outputs, and a patch fixes it).
//
// The reduced equations are kept with distinct lowest set bits (pivots); a new one is
// reduced by the pivots below its lowest bit until it has a new pivot or vanishes. With
// the free unknowns 0, x follows by back substitution from the highest pivot down.
uint64_t solve_block(const uint64_t *rows, const uint8_t *bits, const uint8_t *care,
                     int64_t n_bytes, int64_t s, int64_t e, uint8_t *flips) {
    uint64_t pivot_row[kXorMaxInputs];
    uint8_t pivot_rhs[kXorMaxInputs];
    uint64_t have = 0;
    for (int64_t w = s >> 6; w <= (e - 1) >> 6; ++w) {
        uint64_t word = load_bytes(care, n_bytes, w * 8);
        const uint64_t values = load_bytes(bits, n_bytes, w * 8);
        const int64_t base = w * 64;
        if (base < s) word &= ~uint64_t{0} << (s - base);
        if (base + 64 > e) word &= (uint64_t{1} << (e - base)) - 1;  // 0 < e - base < 64
        while (word) {
            const int t = __builtin_ctzll(word);
            word &= word - 1;
            const int64_t i = base + t;
            uint64_t r = rows[i - s];
            uint8_t v = static_cast<uint8_t>((values >> t) & 1);
            while (r) {
                const int p = __builtin_ctzll(r);
                if ((have >> p) & 1) {
                    r ^= pivot_row[p];
                    v ^= pivot_rhs[p];
                } else {
                    pivot_row[p] = r;
                    pivot_rhs[p] = v;
                    have |= uint64_t{1} << p;
                    break;
                }
            }
            if (r == 0 && v) flips[i >> 3] |= static_cast<uint8_t>(1u << (i & 7));
        }
    }
    uint64_t x = 0;
    for (int p = kXorMaxInputs - 1; p >= 0; --p) {
        if ((have >> p) & 1) {
            x |= static_cast<uint64_t>(pivot_rhs[p] ^ parity(pivot_row[p] & x)) << p;
        }
    }
    return x;
}

void write_field(uint8_t *s, int64_t bit, int width, uint64_t value) {
    for (int t = 0; t < width; ++t) {
        if ((value >> t) & 1) s[(bit + t) >> 3] |= static_cast<uint8_t>(1u << ((bit + t) & 7));
    }
}

std::string str(int64_t v) { return std::to_string(v); }

// Calls f(k, block, offset) for every patch k, in stream order. The k-th 1 of the
// unary counts at stream position i lies in block i - k (the 0s before it are the ends
// of the blocks before it), so the ones are found word by word, not bit by bit.
template <typename F>
void for_each_patch(const XorPatchStreams &p, int width, F &&f) {
    int64_t k = 0;
    for (int64_t w = 0; w * 8 < p.count_bytes; ++w) {
        uint64_t word = load_bytes(p.counts, p.count_bytes, w * 8);
        while (word) {
            const int64_t i = w * 64 + __builtin_ctzll(word);
            word &= word - 1;
            f(k, i - k, static_cast<int64_t>(read_field(p.offsets, p.offset_bytes, k * width,
                                                        width)));
            ++k;
        }
    }
}

// The patches as positions in the plane (increasing). Throws unless the streams hold one
// unary count per block with n_patches ones in all, one offset per patch, zero padding
// and no extra bytes, and every patch lies inside its block and the plane, offsets
// increasing within a block.
std::vector<int64_t> patch_positions(const XorPatchStreams &p, int64_t n_out, int64_t n_bits) {
    const int64_t n_blocks = xor_gate_blocks(n_bits, n_out);
    if (p.n_patches < 0 || p.n_patches > n_bits) {
        throw std::invalid_argument("xor_gate_decode: n_patches=" + str(p.n_patches) +
                                    " must lie in [0, n_bits=" + str(n_bits) + "]");
    }
    const int64_t count_bits = n_blocks + p.n_patches;
    if (p.count_bytes != xor_gate_bytes(count_bits)) {
        throw std::invalid_argument(
            "xor_gate_decode: the patch counts stream has " + str(p.count_bytes) +
            " bytes; " + str(n_blocks) + " blocks with " + str(p.n_patches) +
            " patches need " + str(xor_gate_bytes(count_bits)) + " (truncated or damaged)");
    }
    const int width = xor_gate_offset_bits(n_out);
    const int64_t offset_bits = p.n_patches * width;
    if (p.offset_bytes != xor_gate_bytes(offset_bits)) {
        throw std::invalid_argument(
            "xor_gate_decode: the patch offsets stream has " + str(p.offset_bytes) +
            " bytes; " + str(p.n_patches) + " patches of " + std::to_string(width) +
            " bits need " + str(xor_gate_bytes(offset_bits)) + " (truncated or damaged)");
    }
    if (count_bits % 8 && (p.counts[p.count_bytes - 1] >> (count_bits % 8))) {
        throw std::invalid_argument("xor_gate_decode: nonzero padding after the patch counts");
    }
    if (offset_bits % 8 && (p.offsets[p.offset_bytes - 1] >> (offset_bits % 8))) {
        throw std::invalid_argument("xor_gate_decode: nonzero padding after the patch offsets");
    }
    std::vector<int64_t> positions;
    positions.reserve(static_cast<size_t>(p.n_patches));
    int64_t last_block = -1, last_offset = -1;
    for_each_patch(p, width, [&](int64_t k, int64_t block, int64_t offset) {
        // block < n_blocks also puts a 0 (the last block's end) after the last 1
        if (k >= p.n_patches) {
            throw std::invalid_argument("xor_gate_decode: the patch counts hold more than "
                                        "n_patches=" + str(p.n_patches) + " patches (damaged)");
        }
        if (block >= n_blocks || offset >= n_out || block * n_out + offset >= n_bits ||
            (block == last_block && offset <= last_offset)) {
            throw std::invalid_argument(
                "xor_gate_decode: patch " + str(k) + " (block " + str(block) + ", offset " +
                str(offset) + ") lies outside its block or the plane, or out of order "
                "(damaged patches)");
        }
        last_block = block;
        last_offset = offset;
        positions.push_back(block * n_out + offset);
    });
    if (static_cast<int64_t>(positions.size()) != p.n_patches) {
        throw std::invalid_argument("xor_gate_decode: the patch counts hold " +
                                    str(static_cast<int64_t>(positions.size())) +
                                    " patches, the plane records n_patches=" +
                                    str(p.n_patches) + " (damaged)");
    }
    return positions;
}

}  // namespace

void xor_gate_check_shape(int64_t n_out, int n_in) {
    if (n_in < 1 || n_in > kXorMaxInputs) {
        throw std::invalid_argument("xor gate: n_in=" + std::to_string(n_in) +
                                    " must lie in [1, 64]");
    }
    if (n_out < 8 || n_out > kXorMaxOutputs || n_out % 8 != 0) {
        throw std::invalid_argument("xor gate: n_out=" + str(n_out) +
                                    " must be a multiple of 8 in [8, 4096]");
    }
    if (n_in > n_out) {
        throw std::invalid_argument("xor gate: n_in=" + std::to_string(n_in) +
                                    " must not exceed n_out=" + str(n_out));
    }
}

int xor_gate_offset_bits(int64_t n_out) {
    int width = 1;
    while ((int64_t{1} << width) < n_out) ++width;
    return width;
}

int64_t xor_gate_encode(const uint64_t *rows, int64_t n_out, int n_in, const uint8_t *bits,
                        const uint8_t *care, int64_t n_bits, uint8_t *inputs, uint8_t *flips) {
    xor_gate_check_shape(n_out, n_in);
    if (n_bits < 0) throw std::invalid_argument("xor_gate_encode: n_bits must be >= 0");
    for (int64_t i = 0; i < n_out; ++i) {
        if (n_in < 64 && (rows[i] >> n_in)) {
            throw std::invalid_argument("xor_gate_encode: rows[" + str(i) + "] has bits at or "
                                        "above n_in=" + std::to_string(n_in));
        }
    }
    const int64_t n_bytes = xor_gate_bytes(n_bits);
    const int64_t n_blocks = xor_gate_blocks(n_bits, n_out);
    std::memset(inputs, 0, static_cast<size_t>(xor_gate_bytes(n_blocks * n_in)));
    std::memset(flips, 0, static_cast<size_t>(n_bytes));
    // Blocks start on byte boundaries (n_out % 8 == 0), so threads write disjoint bytes
    // of flips; the inputs, n_in bits each, are packed after the parallel part.
    std::vector<uint64_t> solutions(static_cast<size_t>(n_blocks));
    const int nt = threads_for(n_bits / 8);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 64)
    for (int64_t b = 0; b < n_blocks; ++b) {
        const int64_t s = b * n_out;
        const int64_t e = s + n_out < n_bits ? s + n_out : n_bits;
        solutions[static_cast<size_t>(b)] = solve_block(rows, bits, care, n_bytes, s, e, flips);
    }
    for (int64_t b = 0; b < n_blocks; ++b) {
        write_field(inputs, b * n_in, n_in, solutions[static_cast<size_t>(b)]);
    }
    int64_t count = 0;
    for (int64_t i = 0; i < n_bytes; ++i) count += __builtin_popcount(flips[i]);
    return count;
}

void xor_gate_table(const uint64_t *rows, int64_t n_out, int n_in, uint8_t *table) {
    xor_gate_check_shape(n_out, n_in);
    const int64_t row_bytes = xor_gate_row_bytes(n_out);
    const int groups = xor_gate_groups(n_in);
    std::memset(table, 0, static_cast<size_t>(groups * 256 * row_bytes));
    std::vector<uint8_t> columns(static_cast<size_t>(n_in * row_bytes), 0);
    for (int64_t i = 0; i < n_out; ++i) {
        for (int j = 0; j < n_in; ++j) {
            if ((rows[i] >> j) & 1) {
                columns[static_cast<size_t>(j * row_bytes + (i >> 3))] |=
                    static_cast<uint8_t>(1u << (i & 7));
            }
        }
    }
    for (int g = 0; g < groups; ++g) {
        uint8_t *group = table + static_cast<int64_t>(g) * 256 * row_bytes;
        for (int v = 1; v < 256; ++v) {
            // entry(v) = entry(v without its lowest bit) XOR that bit's column
            const int t = __builtin_ctz(static_cast<unsigned>(v));
            const int j = 8 * g + t;
            const uint8_t *rest = group + static_cast<int64_t>(v & (v - 1)) * row_bytes;
            uint8_t *entry = group + static_cast<int64_t>(v) * row_bytes;
            for (int64_t k = 0; k < row_bytes; ++k) {
                entry[k] = rest[k] ^ (j < n_in ? columns[static_cast<size_t>(j * row_bytes + k)]
                                               : uint8_t{0});
            }
        }
    }
}

void xor_gate_decode(const uint8_t *table, int64_t n_out, int n_in, const uint8_t *inputs,
                     int64_t input_bytes, int64_t n_bits, const XorPatchStreams &patches,
                     uint8_t *out, int64_t out_bytes) {
    xor_gate_check_shape(n_out, n_in);
    if (n_bits < 0) throw std::invalid_argument("xor_gate_decode: n_bits must be >= 0");
    const int64_t n_blocks = xor_gate_blocks(n_bits, n_out);
    const int64_t needed = xor_gate_bytes(n_blocks * n_in);
    if (input_bytes != needed) {
        throw std::invalid_argument("xor_gate_decode: the inputs stream has " + str(input_bytes) +
                                    " bytes; " + str(n_blocks) + " blocks of n_in=" +
                                    std::to_string(n_in) + " bits need " + str(needed));
    }
    const int64_t used = n_blocks * n_in;
    if (used % 8 && (inputs[input_bytes - 1] >> (used % 8))) {
        throw std::invalid_argument("xor_gate_decode: nonzero padding after the inputs");
    }
    if (out_bytes != xor_gate_bytes(n_bits)) {
        throw std::invalid_argument("xor_gate_decode: out has " + str(out_bytes) + " bytes, " +
                                    "n_bits=" + str(n_bits) + " need " +
                                    str(xor_gate_bytes(n_bits)));
    }
    const std::vector<int64_t> positions = patch_positions(patches, n_out, n_bits);
    if (n_bits == 0) return;
    const BlocksFn run = blocks_fn_for(active_isa());  // may throw: outside the team
    const int64_t row_bytes = xor_gate_row_bytes(n_out);
    const int nt = threads_for(n_bits / 4);
    // Contiguous ranges of blocks, one per thread: each range writes only its own bytes.
    const int64_t per = (n_blocks + nt - 1) / nt;
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int t = 0; t < nt; ++t) {
        const int64_t b0 = t * per;
        const int64_t b1 = b0 + per < n_blocks ? b0 + per : n_blocks;
        if (b0 < b1) {
            // a block's patches are applied right after it is written, while it is hot
            const int64_t *first = std::lower_bound(positions.data(),
                                                    positions.data() + positions.size(),
                                                    b0 * n_out);
            const int64_t *last = std::lower_bound(first, positions.data() + positions.size(),
                                                   b1 * n_out);
            run(XorDecodeJob{table, n_out, n_in, row_bytes, inputs, input_bytes, out, out_bytes,
                             b0, b1, first, last});
        }
    }
    if (n_bits % 8) out[out_bytes - 1] &= static_cast<uint8_t>((1u << (n_bits % 8)) - 1);
}

}  // namespace apb
