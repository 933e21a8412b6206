// Portable spmm_csr: one fused multiply-add per element and nonzero, in nonzero order,
// exactly as the SIMD paths do, so every ISA gives bit-identical results.
// Compiled without ISA flags.
#include <cmath>

#include "spmm_csr.h"

namespace apb {

void spmm_csr_tile_scalar(const SpmmTile &t) {
    using namespace spmm_detail;
    for_each_batch(t, halves_to_floats_portable, [&](const NonzeroBatch &batch, float *out) {
        for (int64_t k = 0; k < batch.count; ++k) {
            const float v = batch.values[k];
            const float *x = batch.rows[k];
            for (int64_t c = t.c0; c < t.c1; ++c) out[c] = std::fma(v, x[c], out[c]);
        }
    });
}

}  // namespace apb
