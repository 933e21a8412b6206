// Portable bit-plane packing; compiled without ISA flags, so it runs on any CPU.
#include "pack_planes.h"

namespace apb {

uint8_t pack_planes_row_scalar(const uint8_t *codes, int64_t K, int P, int64_t plane_stride,
                               uint64_t *out) {
    uint8_t all = 0;
    for (int64_t base = 0, w = 0; base < K; base += 64, ++w) {
        const int64_t n = K - base < 64 ? K - base : 64;
        uint64_t words[8] = {};
        for (int64_t j = 0; j < n; ++j) {
            const uint8_t c = codes[base + j];
            all |= c;
            for (int p = 0; p < P; ++p) words[p] |= static_cast<uint64_t>((c >> p) & 1u) << j;
        }
        for (int p = 0; p < P; ++p) out[p * plane_stride + w] = words[p];
    }
    return all;
}

}  // namespace apb
