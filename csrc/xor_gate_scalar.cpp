// XOR-gate decoding, portable: per block, the XOR of one table row per group of eight
// input bits, in 64-bit words.
#include <cstring>

#include "xor_gate.h"

namespace apb {

void xor_gate_decode_blocks_scalar(const XorDecodeJob &job) {
    const int groups = xor_gate_groups(job.n_in);
    const int64_t words = job.row_bytes / 8;
    const int64_t block = job.n_out / 8;
    const int64_t *patch = job.patches;
    uint64_t acc[kXorMaxOutputs / 64 + 4];
    for (int64_t b = job.b0; b < job.b1; ++b) {
        const uint64_t x = xor_detail::read_field(job.inputs, job.input_bytes, b * job.n_in,
                                                  job.n_in);
        for (int64_t w = 0; w < words; ++w) acc[w] = 0;
        for (int g = 0; g < groups; ++g) {
            const uint8_t *entry = job.table +
                                   (static_cast<int64_t>(g) * 256 + ((x >> (8 * g)) & 255)) *
                                       job.row_bytes;
            for (int64_t w = 0; w < words; ++w) {
                uint64_t v;
                std::memcpy(&v, entry + 8 * w, 8);
                acc[w] ^= v;
            }
        }
        const int64_t first = b * block;
        const int64_t left = job.out_bytes - first;
        std::memcpy(job.out + first, acc, static_cast<size_t>(left < block ? left : block));
        xor_detail::apply_patches(job.out, patch, job.patches_end, (b + 1) * job.n_out);
    }
}

}  // namespace apb
