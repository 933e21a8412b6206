// Portable sign packing; compiled without ISA flags, so it runs on any CPU.
#include "pack_signs.h"

namespace apb {

void pack_signs_row_scalar(const float *x, int64_t K, uint64_t *out) {
    using namespace pack_detail;
    const int64_t full = K / 64;
    for (int64_t w = 0; w < full; ++w) out[w] = pack_word_scalar(x + 64 * w, 64);
    if (K % 64 != 0) out[full] = pack_word_scalar(x + 64 * full, K % 64);
}

}  // namespace apb
