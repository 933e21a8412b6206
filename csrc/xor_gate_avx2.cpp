// XOR-gate decoding with AVX2: a block's n_out output bits are built in ymm registers,
// 128 bytes (four registers) at a time, as the XOR of one table row per group of eight
// input bits. Inside a range a block's last register may run past the block into the
// next one, which is written afterwards; a block whose registers would leave the range
// goes through a buffer. Compiled with -mavx2; called only when cpu_features().avx2 is
// true.
#include <immintrin.h>

#include <cstring>

#include "xor_gate.h"

namespace apb {

namespace {

// Everything the inner loops read, in locals: stores through uint8_t* may alias any
// memory, so fields read through a reference would be reloaded after every store.
struct Rows {
    const uint8_t *table;
    int64_t row_bytes;
    int groups;
};

// Registers [c, c + V) of the row of input x, XORed over the groups, stored at dst.
template <int V>
inline void chunk(const Rows rows, uint64_t x, int64_t c, uint8_t *dst) {
    __m256i acc[V];
    for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_si256();
    const uint8_t *base = rows.table + c * 32;
    for (int g = 0; g < rows.groups; ++g) {
        const uint8_t *entry =
            base + (static_cast<int64_t>(g) * 256 + ((x >> (8 * g)) & 255)) * rows.row_bytes;
        for (int v = 0; v < V; ++v) {
            acc[v] = _mm256_xor_si256(
                acc[v], _mm256_loadu_si256(reinterpret_cast<const __m256i *>(entry + 32 * v)));
        }
    }
    for (int v = 0; v < V; ++v) {
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(dst + 32 * v), acc[v]);
    }
}

// The whole row (registers = row_bytes / 32) of input x at dst.
inline void row(const Rows rows, int64_t registers, uint64_t x, uint8_t *dst) {
    int64_t c = 0;
    for (; c + 4 <= registers; c += 4) chunk<4>(rows, x, c, dst + 32 * c);
    switch (registers - c) {
        case 3: chunk<3>(rows, x, c, dst + 32 * c); break;
        case 2: chunk<2>(rows, x, c, dst + 32 * c); break;
        case 1: chunk<1>(rows, x, c, dst + 32 * c); break;
        default: break;
    }
}

}  // namespace

void xor_gate_decode_blocks_avx2(const XorDecodeJob &job) {
    const Rows rows{job.table, job.row_bytes, xor_gate_groups(job.n_in)};
    const int64_t registers = job.row_bytes / 32;
    const int64_t block = job.n_out / 8;
    const int n_in = job.n_in;
    const uint8_t *inputs = job.inputs;
    const int64_t input_bytes = job.input_bytes;
    uint8_t *out = job.out;
    const int64_t out_bytes = job.out_bytes;
    const int64_t b0 = job.b0, b1 = job.b1;
    const int64_t range_end = b1 * block < out_bytes ? b1 * block : out_bytes;
    const int64_t *patch = job.patches;
    const int64_t *const patches_end = job.patches_end;
    alignas(32) uint8_t buffer[kXorMaxOutputs / 8 + 32];
    for (int64_t b = b0; b < b1; ++b) {
        const uint64_t x = xor_detail::read_field(inputs, input_bytes, b * n_in, n_in);
        const int64_t first = b * block;
        if (first + job.row_bytes <= range_end) {
            row(rows, registers, x, out + first);
        } else {
            row(rows, registers, x, buffer);
            const int64_t left = out_bytes - first;
            std::memcpy(out + first, buffer, static_cast<size_t>(left < block ? left : block));
        }
        xor_detail::apply_patches(out, patch, patches_end, (b + 1) * job.n_out);
    }
}

}  // namespace apb
